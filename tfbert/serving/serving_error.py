"""ServingError: a failed request, with the gRPC status code TF Serving would return.

The server raises it and turns it into a gRPC status or an HTTP status; the client raises it
for every failed call, so callers branch on `error.code` whichever protocol they used.
"""

import grpc

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc, 2.20): the HTTP status its
# REST API answers for each canonical code.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# The reverse, for REST clients. HTTP loses detail (400 covers INVALID_ARGUMENT,
# FAILED_PRECONDITION and OUT_OF_RANGE), so each status maps to its most common code.
CODE_FOR_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# tensorflow/core/protobuf/error_codes.proto numbers are the gRPC numbers.
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def code_from_number(number):
    """The grpc.StatusCode for a canonical error number (TF's `error_code`); UNKNOWN if odd."""
    return _CODE_BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)


class ServingError(Exception):
    """A request that failed with a canonical status code.

    Attributes:
        code: a `grpc.StatusCode` (for REST replies, the code the HTTP status stands for).
        message: the server's message, as TF Serving words it where it has one.
        http_status: the HTTP status of a REST reply, or None for gRPC.
    """

    def __init__(self, code, message, http_status=None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    @property
    def http(self):
        """The HTTP status TF Serving's REST API answers for this error."""
        if self.http_status is not None:
            return self.http_status
        return HTTP_STATUS.get(self.code, 500)


def invalid_argument(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message):
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message):
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message):
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message):
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def internal(message):
    return ServingError(grpc.StatusCode.INTERNAL, message)
