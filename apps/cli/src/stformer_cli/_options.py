"""Options shared by several commands: one name, one help text and one default for each idea.

Every command that reads an ``.h5ad`` takes :data:`GeneIdKey`, :data:`Layer`,
:data:`AllowNonInteger` and :data:`NCountsKey`, so that the fixes the input errors suggest
(``--gene-id-key``, ``--layer``, ``--allow-non-integer``, ``--n-counts-key``) exist wherever
those errors can be raised (``apps/cli/tests/test_options.py`` checks it). The table of
options is in ``docs/cli.md``.
"""

from __future__ import annotations

from typing import Annotated

import typer

#: the default ``--label-key`` of every command that reads labels
LABEL_KEY = "cell_type"

#: ``--hidden-layer`` of embed, evaluate and demo
HiddenLayer = Annotated[
    int,
    typer.Option(
        help="Hidden layer pooled into cell embeddings: -1 last, -2 second-to-last (Geneformer), "
        "0 input embeddings."
    ),
]

#: ``--gene-id-key`` of every command that reads an h5ad
GeneIdKey = Annotated[
    str | None,
    typer.Option(
        "--gene-id-key",
        help="var column with the gene ids (default: var_names; a Geneformer model: "
        "var['ensembl_id'] when present).",
    ),
]

#: ``--layer`` of every command that reads an h5ad
Layer = Annotated[
    str | None, typer.Option("--layer", help="Layer with the raw counts (default: X).")
]

#: ``--allow-non-integer`` of every command that reads an h5ad
AllowNonInteger = Annotated[
    bool,
    typer.Option(
        "--allow-non-integer",
        help="Accept non-integer (already normalised) values instead of refusing them.",
    ),
]

#: ``--n-counts-key`` of the commands that read an h5ad with a model's settings
NCountsKey = Annotated[
    str | None,
    typer.Option(
        "--n-counts-key",
        help="obs column with library sizes ('' = row sums; default: the model's setting).",
    ),
]

#: ``--label-key`` (default ``cell_type`` everywhere)
LabelKey = Annotated[str, typer.Option("--label-key", help="obs column with the cell labels.")]

#: ``--max-length``: the longest token sequence (Geneformer's ``model_input_size``)
MaxLength = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        help="Longest token sequence, special tokens included (Geneformer's model_input_size).",
    ),
]

#: ``--k`` of the kNN evaluations
K = Annotated[int, typer.Option("--k", help="Neighbours of the kNN classifier.")]

#: ``--test-fraction``: cells held out of training
TestFraction = Annotated[
    float, typer.Option("--test-fraction", help="Fraction of cells held out for evaluation.")
]

#: ``--seed``
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]

#: ``--batch-size``
BatchSize = Annotated[int, typer.Option("--batch-size", help="Cells per batch.")]

#: ``--progress/--no-progress``
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
