from tfbert.models.bert_classifier import BertClassifier
from tfbert.models.bert_encoder import BertEncoder
from tfbert.models.bert_pretrainer import BertPretrainer
from tfbert.models.bert_question_answerer import BertQuestionAnswerer
from tfbert.models.bert_task import BertTask
from tfbert.models.bert_token_classifier import BertTokenClassifier
