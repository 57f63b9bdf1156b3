"""TF Serving's REST JSON <-> tensors (util/json_tensor.cc, 2.20).

Requests: `{"signature_name": ..., "instances": [...]}` (row format: one entry per batch row,
objects when the signature has several inputs) or `{"inputs": ...}` (columnar: a value, or an
object of named values). Values are converted with the signature's dtype; binary strings are
`{"b64": "..."}`. Responses: `{"predictions": [...]}` for row requests, `{"outputs": ...}` for
columnar ones; a single output is written bare, several as objects. Output tensors whose name
ends in `_bytes` are written as `{"b64": ...}`. Floats are written the way TF Serving writes
them (shortest of %g and %.9g that round-trips, always with a '.' or an exponent).

Differences, both where TF Serving would emit invalid JSON: a string output that is not
valid UTF-8 is written as `{"b64": ...}`, and so is such a class label.
"""

import base64
import binascii
import json
import math

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from tfbert.serving import tensors
from tfbert.serving.serving_error import invalid_argument, unimplemented

B64 = "b64"
BYTES_SUFFIX = "_bytes"

_INT_RANGES = {
    types_pb2.DT_INT32: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT16: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_UINT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_NUMPY_DTYPE = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}


def debug_string(value):
    """JsonValueToDebugString: compact JSON, cut at 256 bytes."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:256]


def _type_string(value):
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value, dtype):
    return invalid_argument(
        f"JSON Value: {debug_string(value)} Type: {_type_string(value)} is not of expected "
        f"type: {tensors.dtype_name(dtype)}")


def parse_json(body):
    """ParseJson: the request body as a JSON object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid_argument(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def signature_name(doc):
    """The optional `signature_name` key (empty means serving_default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key "
            "must be a string value.")
    return name


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def _decode_b64(value):
    if not _is_b64(value):
        raise invalid_argument(
            f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value[B64], validate=True)
    except (binascii.Error, ValueError):
        # absl::Base64Unescape also takes the URL-safe alphabet and missing padding.
        try:
            text = value[B64]
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None


def _scalar(value, dtype):
    """AddValueToTensor: one JSON leaf as a Python value of `dtype`."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return _decode_b64(value)
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", errors="surrogatepass")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    raise unimplemented(
        f"Conversion of JSON Value: {debug_string(value)} to type: {tensors.dtype_name(dtype)}")


def _dense_shape(value):
    """GetDenseTensorShape: sizes along the first element of each nesting level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, shape, dtype, out):
    """FillTensorProto: checks the nesting is dense and collects the leaves in order."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in "
                f"the JSON DOM. Expected at level: {rank}")
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def json_to_array(value, dtype):
    """A JSON value (scalar or nested lists) as a numpy array of the signature's dtype."""
    shape = _dense_shape(value)
    values = []
    _fill(value, 0, shape, dtype, values)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype not in _NUMPY_DTYPE:
        if values:
            raise unimplemented(
                f"Conversion of JSON Value: {debug_string(values[0])} to type: "
                f"{tensors.dtype_name(dtype)}")
        raise unimplemented(f"Conversion of JSON to type: {tensors.dtype_name(dtype)}")
    return np.asarray(values, dtype=_NUMPY_DTYPE[dtype]).reshape(shape)


def predict_inputs(doc, input_infos):
    """FillPredictRequestFromJson: ({alias: array}, 'row' | 'columnar')."""
    if not input_infos:
        raise invalid_argument("Failed to get input map for signature")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _instances(instances, input_infos), "row"
    if has_inputs:
        return _inputs(doc["inputs"], input_infos), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _instances(instances, input_infos):
    names = sorted(input_infos)

    def is_object(v):
        return isinstance(v, dict) and not _is_b64(v)

    if not is_object(instances[0]) and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map")
    objects = is_object(instances[0])
    rows = {name: [] for name in names}
    shapes = {}

    def add(name, value, index, key_text):
        if name not in input_infos:
            raise invalid_argument(
                f"Failed to process element: {index}{key_text} of 'instances' list. Error: "
                f"Invalid argument: JSON object: does not have named input: {name}")
        try:
            array = json_to_array(value, input_infos[name].dtype)
        except Exception as e:  # noqa: BLE001 -- ServingError from the conversion.
            message = getattr(e, "message", str(e))
            raise invalid_argument(
                f"Failed to process element: {index}{key_text} of 'instances' list. Error: "
                f"Invalid argument: {message}") from None
        if name in shapes and shapes[name] != array.shape:
            if np.prod(shapes[name]) != np.prod(array.shape):
                expected = int(np.prod(shapes[name]))
                detail = f"Expecting tensor size: {expected} but got: {array.size}"
            else:
                detail = (f"Expecting shape {tensors.shape_string(shapes[name])} but got: "
                          f"{tensors.shape_string(array.shape)}")
            raise invalid_argument(
                f"Failed to process element: {index}{key_text} of 'instances' list. Error: "
                f"Invalid argument: {detail}")
        shapes.setdefault(name, array.shape)
        rows[name].append(array)

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                add(name, value, index, f" key: {name}")
            if set(element) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(names)}")
        else:
            if is_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list")
            add(names[0], element, index, "")
    return {name: np.stack(rows[name]) if rows[name] else None for name in names}


def _inputs(value, input_infos):
    if not isinstance(value, dict) or _is_b64(value):
        if len(input_infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map")
        (name, info), = input_infos.items()
        return {name: json_to_array(value, info.dtype)}
    arrays = {}
    for name in sorted(input_infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], input_infos[name].dtype)
    return arrays


# -- responses --------------------------------------------------------------------------------

def _float_text(value, float32):
    """WriteDecimal: %g if it round-trips, else max_digits10; '.0' on whole numbers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    parsed = np.float32(text) if float32 else float(text)
    if parsed != value:
        text = f"{value:.9g}" if float32 else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _string_text(value, as_bytes):
    if not as_bytes:
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            pass
    return '{"b64": "' + base64.b64encode(value).decode("ascii") + '"}'


def _leaf_texts(array, name):
    """Every element of `array`, flattened, as JSON text."""
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "O" or kind == "S":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return [_string_text(bytes(v), as_bytes) for v in flat]
    if kind == "f":
        float32 = array.dtype != np.float64
        return [_float_text(float(v), float32) for v in flat]
    if kind == "b":
        return ["true" if v else "false" for v in flat]
    if kind in "iu":
        return [str(int(v)) for v in flat]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(texts, shape):
    """Nested JSON arrays of `shape` around the flat leaf texts."""
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:])
                           for i in range(shape[0])) + "]"


def outputs_to_json(outputs, fmt):
    """MakeJsonFromTensors: {name: array} as a row or columnar response body."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "row":
        batch = None
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and array.shape[0] != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                    f"expecting: {batch}")
            batch = array.shape[0]
        texts = {name: _leaf_texts(outputs[name], name) for name in names}
        items = []
        for row in range(batch):
            values = {}
            for name in names:
                array = outputs[name]
                per_row = int(np.prod(array.shape[1:], dtype=np.int64))
                values[name] = _nest(texts[name][row * per_row:(row + 1) * per_row],
                                     array.shape[1:])
            if len(names) > 1:
                items.append("{" + ", ".join(f"{json.dumps(n)}: {values[n]}" for n in names) + "}")
            else:
                items.append(values[names[0]])
        return '{\n    "predictions": [' + ",\n        ".join(items) + "\n    ]\n}"
    columns = {name: _nest(_leaf_texts(outputs[name], name), outputs[name].shape)
               for name in names}
    if len(names) > 1:
        body = "{\n        " + ",\n        ".join(
            f"{json.dumps(n)}: {columns[n]}" for n in names) + "\n    }"
    else:
        body = columns[names[0]]
    return '{\n    "outputs": ' + body + "\n}"


def classification_to_json(result):
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        pairs = [
            "[" + _string_text(c.label.encode("utf-8"), False) + ", "
            + _float_text(c.score, True) + "]"
            for c in classifications.classes
        ]
        rows.append("[" + ", ".join(pairs) + "]")
    return '{\n    "results": [' + ",\n        ".join(rows) + "\n    ]\n}"


def regression_to_json(result):
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = [_float_text(r.value, True) for r in result.regressions]
    return '{\n    "results": [' + ", ".join(values) + "]\n}"


# -- classify / regress requests ----------------------------------------------------------------

def _kind_error(name, feature):
    kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
        feature.WhichOneof("kind"), "UNKNOWN")
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_to_feature(value, name, feature):
    """AddValueToFeature: one JSON value into a tf.train.Feature."""
    kind = feature.WhichOneof("kind")

    def need(wanted):
        if kind not in (None, wanted):
            raise _kind_error(name, feature)

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {_type_string(value)}")
    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        need("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", errors="surrogatepass"))
    elif isinstance(value, float) or not -(2**63) <= value < 2**64:
        need("float_list")
        feature.float_list.value.append(float(value))
    else:
        need("int64_list")
        if value >= 2**63:
            raise invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def _example(value, out):
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_type_string(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        out.features.feature[name].CopyFrom(feature)


def fill_examples_request(doc, request):
    """FillClassifyRegressRequestFromJson: `context` and `examples` into request.input."""
    request.model_spec.signature_name = signature_name(doc)
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is "
            "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    for value in examples:
        out = (request.input.example_list_with_context.examples.add() if has_context
               else request.input.example_list.examples.add())
        _example(value, out)


def example_proto(features):
    """A tf.train.Example from {name: str | bytes | int | float | list of those} (clients)."""
    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(value, str):
                feature.bytes_list.value.append(value.encode("utf-8"))
            elif isinstance(value, bytes):
                feature.bytes_list.value.append(value)
            elif isinstance(value, (bool, int, np.integer)):
                feature.int64_list.value.append(int(value))
            else:
                feature.float_list.value.append(float(value))
    return example
