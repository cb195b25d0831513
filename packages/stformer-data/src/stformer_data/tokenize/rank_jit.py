"""The numba-compiled loops of :mod:`stformer_data.tokenize.rank_kernel` (imported on first use: importing
numba takes about a second). See that module for the algorithm."""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

_SMALL = 32  # rows with at most this many keys are insertion-sorted
_MAX_DIGIT = 11
_jit = numba.njit(cache=True, nogil=True)


@_jit
def rank_rows(
    starts,
    ends,
    indices,
    data,
    factor,
    column_token,
    limit,
    check,
    r0,
    r1,
    out_start,
    out_tokens,
    lengths,
):
    """Rank rows ``r0:r1``; row ``i`` holds ``indices/data[starts[i]:ends[i]]`` and writes
    ``lengths[i]`` tokens at ``out_tokens[out_start[i]:]``. Returns the flag bits of the first
    offending row (0: all rows done)."""
    n_cols = factor.size
    keys, keys2, toks, toks2, hist = _scratch(starts, ends, r0, r1)
    fvals = np.empty(keys.size, np.float32)
    fbits = fvals.view(np.uint32)
    top = np.uint32(0x7FFFFFFF)
    for i in range(r0, r1):
        a, b = starts[i], ends[i]
        if check and _bad_values(data, a, b, check == 2):
            return 1
        flags = 0
        m = 0
        prev = -1
        for p in range(a, b):
            # unsigned indices (all known to be >= 0) spare numba's negative-index wraparound
            x = data[np.uint64(p)]
            j = np.int64(indices[np.uint64(p)])
            if j <= prev:
                flags |= 2
            prev = j
            if j < 0 or j >= n_cols:
                flags |= 4
                break
            t = column_token[np.uint64(j)]
            if t >= 0:
                v = np.float32(x) * factor[np.uint64(j)]  # the float32 product (as numpy's)
                if v > 0:  # false for NaN and for genes without a usable median (factor 0)
                    fvals[np.uint64(m)] = v
                    toks[np.uint64(m)] = t
                    m += 1
        if flags:
            return flags
        for q in range(m):
            keys[q] = top - fbits[q]
        src_k, src_t = _sort_keys(keys, toks, keys2, toks2, m, hist, False)
        n = min(m, limit)
        o = out_start[i]
        for q in range(n):
            out_tokens[o + q] = src_t[q]
        lengths[i] = n
    return 0


@_jit
def rank_rows_table(
    starts,
    ends,
    indices,
    data,
    factor,
    column_token,
    limit,
    check,
    r0,
    r1,
    out_start,
    out_tokens,
    lengths,
    pair_rank,
    rank_token,
    rank_key,
    xmax,
):
    """:func:`rank_rows` with a rank table (same tokens): a value ``x`` in ``1..xmax`` (integer)
    of column ``j`` has the global rank ``pair_rank[j * xmax + x - 1]`` among all such pairs in
    (key, token, column) order, so a row is sorted by setting one bit per value in a bitmap over
    the ranks and reading the set bits back in order (``rank_token``/``rank_key`` give the token
    and key of a rank). Other values (larger counts, fractions) are sorted apart and merged."""
    n_cols = factor.size
    n_words = (rank_token.size + 63) >> 6
    bitmap = np.zeros(n_words, np.uint64)
    summary = np.zeros((n_words + 63) >> 6, np.uint64)
    keys, keys2, toks, toks2, hist = _scratch(starts, ends, r0, r1)
    top = np.uint32(0x7FFFFFFF)
    one = np.uint64(1)
    for i in range(r0, r1):
        a, b = starts[i], ends[i]
        if check and _bad_values(data, a, b, check == 2):
            return 1
        flags = 0
        m = 0  # values outside the table
        prev = -1
        for p in range(a, b):
            x = data[np.uint64(p)]  # unsigned indices, as in rank_rows
            j = np.int64(indices[np.uint64(p)])
            if j <= prev:
                flags |= 2
            prev = j
            if j < 0 or j >= n_cols:
                flags |= 4
                break
            if x >= 1 and x <= xmax:  # false for NaN: the cast below is then defined
                xi = np.int64(x)
                if xi == x:
                    r = pair_rank[np.uint64(j * xmax + xi - 1)]  # -1: no token or median
                    if r >= 0:
                        ur = np.uint64(r)
                        bitmap[ur >> np.uint64(6)] |= one << (ur & np.uint64(63))
                    continue
            t = column_token[j]
            if t >= 0:
                v = np.float32(np.float32(x) * factor[j])
                if v > 0:
                    keys[m] = top - np.uint32(v.view(np.uint32))
                    toks[m] = t
                    m += 1
        if flags:
            bitmap[:] = 0  # leave the scratch clean
            return flags
        side_k, side_t = _sort_keys(keys, toks, keys2, toks2, m, hist, True)
        # which bitmap words are set, 64 per summary word (a branch-free loop that vectorises;
        # cheaper than updating the summary with every value)
        for sw in range(summary.size):
            acc = np.uint64(0)
            w0 = sw * 64
            for q in range(min(64, n_words - w0)):
                acc |= np.uint64(bitmap[w0 + q] != 0) << np.uint64(q)
            summary[sw] = acc
        o = out_start[i]
        n = 0
        s = 0  # next value outside the table
        for sw in range(summary.size):
            bits = summary[sw]
            if bits == 0:
                continue
            summary[sw] = 0
            while bits:
                w = sw * 64 + np.int64(trailing_zeros(bits))
                bits &= bits - one
                word = bitmap[w]
                bitmap[w] = 0
                if s == m and n + 64 <= limit:  # nothing to merge, room for the whole word
                    base = w * 64
                    while word:
                        r = np.uint64(base) + np.uint64(trailing_zeros(word))
                        out_tokens[np.uint64(o + n)] = rank_token[r]
                        word &= word - one
                        n += 1
                    continue
                while word and n < limit:
                    r = w * 64 + np.int64(trailing_zeros(word))
                    word &= word - one
                    t = rank_token[r]
                    if s < m:
                        k = rank_key[r]
                        while (
                            s < m
                            and n < limit
                            and (side_k[s] < k or (side_k[s] == k and side_t[s] < t))
                        ):
                            out_tokens[o + n] = side_t[s]
                            n += 1
                            s += 1
                        if n == limit:
                            break
                    out_tokens[o + n] = t
                    n += 1
        while s < m and n < limit:
            out_tokens[o + n] = side_t[s]
            n += 1
            s += 1
        lengths[i] = n
    return 0


@_jit
def _scratch(starts, ends, r0, r1):
    """Per-call scratch of the rank kernels: keys and tokens (twice, for the radix passes) as
    long as the longest row of ``r0:r1``, and the radix histograms."""
    width = 1
    for i in range(r0, r1):
        width = max(width, ends[i] - starts[i])
    return (
        np.empty(width, np.uint32),
        np.empty(width, np.uint32),
        np.empty(width, np.int32),
        np.empty(width, np.int32),
        np.zeros((3, 1 << _MAX_DIGIT), np.int64),
    )


@_jit
def _sort_keys(keys, toks, keys2, toks2, m, hist, exact):
    """Sort ``keys[:m]`` (carrying ``toks``) by (key, token); returns the pair of arrays (``keys``
    and ``toks`` or ``keys2`` and ``toks2``) that holds the result. The radix passes sort
    ``key - min``; ``exact`` adds the minimum back (only needed where keys are compared after)."""
    src_k, src_t = keys, toks
    if m > _SMALL:
        kmin = keys[0]
        kmax = keys[0]
        for q in range(1, m):
            kmin = min(kmin, keys[q])
            kmax = max(kmax, keys[q])
        span = kmax - kmin
        nbits = 0
        while span:
            nbits += 1
            span >>= np.uint32(1)
        passes = (nbits + _MAX_DIGIT - 1) // _MAX_DIGIT
        if passes > 0:
            dbits = (nbits + passes - 1) // passes
            nb = 1 << dbits
            mask = np.uint32(nb - 1)
            hist[:passes, :nb] = 0
            for q in range(m):
                uq = np.uint64(q)
                k = keys[uq] - kmin
                keys[uq] = k
                for d in range(passes):
                    hist[np.uint64(d), (k >> np.uint32(d * dbits)) & mask] += 1
            dst_k, dst_t = keys2, toks2
            for d in range(passes):
                total = 0
                for b in range(nb):
                    c = hist[d, b]
                    hist[d, b] = total
                    total += c
                shift = np.uint32(d * dbits)
                for q in range(m):
                    uq = np.uint64(q)
                    k = src_k[uq]
                    b = (k >> shift) & mask
                    pos = np.uint64(hist[d, b])
                    dst_k[pos] = k
                    dst_t[pos] = src_t[uq]
                    hist[d, b] = pos + np.uint64(1)
                src_k, dst_k = dst_k, src_k
                src_t, dst_t = dst_t, src_t
            if exact:
                for q in range(m):
                    src_k[q] += kmin
    sort_runs(src_k, src_t, m, m <= _SMALL)
    return src_k, src_t


@_jit
def _bad_values(data, a, b, integers):
    """Whether ``data[a:b]`` holds NaN/inf, negative or (``integers``) non-integer values;
    branch-free, so that the loop vectorises."""
    bad = False
    if integers:
        for p in range(a, b):
            x = np.float64(data[p])
            bad |= (x - np.floor(x) != 0.0) | (x < 0.0)  # NaN and inf give NaN != 0
    else:
        for p in range(a, b):
            x = np.float64(data[p])
            bad |= ~((x >= 0.0) & (x < np.inf))
    return bad


@_jit
def sort_runs(keys, toks, m, full):
    """Insertion sort by (key, token): the whole row when ``full``, else only runs of equal keys
    (after the radix passes the keys are sorted; ties must come in token order)."""
    if full:
        for q in range(1, m):
            k, t = keys[q], toks[q]
            r = q - 1
            while r >= 0 and (keys[r] > k or (keys[r] == k and toks[r] > t)):
                keys[r + 1] = keys[r]
                toks[r + 1] = toks[r]
                r -= 1
            keys[r + 1] = k
            toks[r + 1] = t
        return
    q = 1
    while q < m:
        if keys[q] != keys[q - 1]:
            q += 1
            continue
        a = q - 1
        while q < m and keys[q] == keys[a]:
            q += 1
        for s in range(a + 1, q):  # insertion sort of toks[a:q] (usually already in order)
            t = toks[s]
            r = s - 1
            while r >= a and toks[r] > t:
                toks[r + 1] = toks[r]
                r -= 1
            toks[r + 1] = t


@_jit
def compact(out_tokens, out_start, lengths, offsets):
    """Close the gaps left by rows shorter than their reserved space; fills ``offsets``."""
    pos = 0
    for i in range(lengths.size):
        n = lengths[i]
        s = out_start[i]
        if s != pos:
            for q in range(n):
                out_tokens[pos + q] = out_tokens[s + q]
        offsets[i] = pos
        pos += n
    offsets[lengths.size] = pos
    return pos
