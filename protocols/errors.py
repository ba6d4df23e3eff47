"""The one exception a codec raises: the byte stream cannot be trusted any more."""


class ProtocolError(Exception):
    """Close this connection: unframeable bytes, a frame over its size limit,
    or a stream that keeps producing garbage.

    A single bad frame (wrong checksum, impossible field) is *not* a
    ProtocolError: the codec drops it, counts it in ``codec.stats`` and goes on.
    """
