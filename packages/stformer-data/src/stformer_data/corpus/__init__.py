"""Stage 4, corpus: token corpora on disk (Hugging Face ``datasets`` Arrow plus describing files).

``format`` (every file name and the ``datasets`` state, read and written in one place),
``config`` (:class:`TokenizeConfig`), ``plan`` (check the files, cut units, fingerprint),
``chunks`` (a unit's chunks through the tokenizer contract), ``shard`` (one unit into one Arrow
shard), ``write`` (:func:`tokenize_files`, the driver), ``read`` (:func:`load_corpus`).
"""

from stformer_data.corpus.config import TokenizeConfig
from stformer_data.corpus.format import is_complete_corpus, is_stformer_corpus
from stformer_data.corpus.read import Corpus, load_corpus
from stformer_data.corpus.write import tokenize_files

__all__ = [
    "Corpus",
    "TokenizeConfig",
    "is_complete_corpus",
    "is_stformer_corpus",
    "load_corpus",
    "tokenize_files",
]
