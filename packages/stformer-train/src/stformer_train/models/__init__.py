"""Models shared by the Hugging Face and Lightning paths."""

from stformer_train.models._bert import build_bert_config, build_mlm_model

__all__ = ["build_bert_config", "build_mlm_model"]
