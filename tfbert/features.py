"""Feature names shared by TFRecords, model inputs and serving signatures.

These strings are a public contract (TF Hub BERT inputs, google-research/bert TFRecords,
TF Serving signatures); every other module imports them from here.
"""

# Model inputs (TF Hub BERT convention), int32 [batch, seq].
INPUT_WORD_IDS = "input_word_ids"
INPUT_MASK = "input_mask"
INPUT_TYPE_IDS = "input_type_ids"
MODEL_INPUTS = (INPUT_WORD_IDS, INPUT_MASK, INPUT_TYPE_IDS)
# Pretrainer-only input, int32 [batch, max_predictions].
MASKED_LM_POSITIONS = "masked_lm_positions"

# Encoder outputs.
SEQUENCE_OUTPUT = "sequence_output"
POOLED_OUTPUT = "pooled_output"
ENCODER_OUTPUTS = "encoder_outputs"
# Pretrainer outputs.
MLM_LOGITS = "mlm_logits"
NSP_LOGITS = "nsp_logits"
# Question answering outputs.
START_LOGITS = "start_logits"
END_LOGITS = "end_logits"

# Pretraining TFRecord features: exactly google-research/bert's.
RECORD_INPUT_IDS = "input_ids"
RECORD_INPUT_MASK = "input_mask"
RECORD_SEGMENT_IDS = "segment_ids"
RECORD_MASKED_LM_POSITIONS = "masked_lm_positions"
RECORD_MASKED_LM_IDS = "masked_lm_ids"
RECORD_MASKED_LM_WEIGHTS = "masked_lm_weights"
RECORD_NEXT_SENTENCE_LABELS = "next_sentence_labels"

# Serving signatures: names, inputs and outputs (TF Serving's own names for the Classify
# and Regress APIs included).
TEXT = "text"
TEXT_B = "text_b"
SERVING_DEFAULT = "serving_default"
CLASSIFY = "classify"
REGRESS = "regress"
SERVE_IDS = "serve_ids"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
EXAMPLES = "inputs"              # Classify / Regress input: serialized tf.Example [B]
SCORES = "scores"                # Classify output
CLASSES = "classes"              # Classify output
REGRESS_OUTPUTS = "outputs"      # Regress output
QUESTION = "question"
CONTEXT = "context"
PROBABILITIES = "probabilities"
LABEL_ID = "label_id"
LABEL = "label"
SCORE = "score"
WORDS = "words"
LABELS = "labels"
NUM_WORDS = "num_words"
START_CHAR = "start_char"
END_CHAR = "end_char"
ANSWER = "answer"
NULL_SCORE = "null_score"
