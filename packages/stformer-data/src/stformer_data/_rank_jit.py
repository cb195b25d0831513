"""The numba-compiled loops of :mod:`stformer_data._rank_kernel` (imported on first use: importing
numba takes about a second). See that module for the algorithm."""

from __future__ import annotations

import numba
import numpy as np

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
    width = 1
    for i in range(r0, r1):
        width = max(width, ends[i] - starts[i])
    keys = np.empty(width, np.uint32)
    keys2 = np.empty(width, np.uint32)
    toks = np.empty(width, np.int32)
    toks2 = np.empty(width, np.int32)
    fvals = np.empty(width, np.float32)
    fbits = fvals.view(np.uint32)
    hist = np.zeros((3, 1 << _MAX_DIGIT), np.int64)
    top = np.uint32(0x7FFFFFFF)
    for i in range(r0, r1):
        a, b = starts[i], ends[i]
        if check and _bad_values(data, a, b, check == 2):
            return 1
        flags = 0
        m = 0
        prev = -1
        for p in range(a, b):
            x = data[p]
            j = np.int64(indices[p])
            if j <= prev:
                flags |= 2
            prev = j
            if j < 0 or j >= n_cols:
                flags |= 4
                break
            t = column_token[j]
            if t >= 0:
                v = np.float32(x) * factor[j]  # the float32 product (same as numpy's)
                if v > 0:  # false for NaN and for genes without a usable median (factor 0)
                    fvals[m] = v
                    toks[m] = t
                    m += 1
        if flags:
            return flags
        kmin = top
        kmax = np.uint32(0)
        for q in range(m):
            k = top - fbits[q]
            keys[q] = k
            kmin = min(kmin, k)
            kmax = max(kmax, k)
        src_k, src_t = keys, toks
        if m > _SMALL:
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
                    k = keys[q] - kmin
                    keys[q] = k
                    for d in range(passes):
                        hist[d, (k >> np.uint32(d * dbits)) & mask] += 1
                dst_k, dst_t = keys2, toks2
                for d in range(passes):
                    total = 0
                    for b in range(nb):
                        c = hist[d, b]
                        hist[d, b] = total
                        total += c
                    shift = np.uint32(d * dbits)
                    for q in range(m):
                        k = src_k[q]
                        b = (k >> shift) & mask
                        pos = hist[d, b]
                        dst_k[pos] = k
                        dst_t[pos] = src_t[q]
                        hist[d, b] = pos + 1
                    src_k, dst_k = dst_k, src_k
                    src_t, dst_t = dst_t, src_t
        sort_runs(src_k, src_t, m, m <= _SMALL)
        n = min(m, limit)
        o = out_start[i]
        for q in range(n):
            out_tokens[o + q] = src_t[q]
        lengths[i] = n
    return 0


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
