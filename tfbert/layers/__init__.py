from tfbert.layers.bert_embeddings import BertEmbeddings
from tfbert.layers.masked_lm_head import MaskedLMHead
from tfbert.layers.span_head import SpanHead
from tfbert.layers.transformer_block import TransformerBlock
