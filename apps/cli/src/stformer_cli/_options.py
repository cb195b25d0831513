"""Options shared by several commands: one name, one help text and one default for each idea."""

from __future__ import annotations

from typing import Annotated

import typer

#: ``--hidden-layer`` of embed, evaluate and demo
HiddenLayer = Annotated[
    int,
    typer.Option(
        help="Hidden layer pooled into cell embeddings: -1 last, -2 second-to-last (Geneformer), "
        "0 input embeddings."
    ),
]
