"""Size caps both halves apply to what crosses the wire."""

#: Default gRPC message cap, both directions, both hops (``max_message_bytes``).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Room left in a message for everything but the JSON payload (ids, metadata, framing):
#: a runtime caps a result or chunk at ``max_message_bytes - ENVELOPE_BYTES``.
ENVELOPE_BYTES = 4096
#: Longest progress message a runtime sends; longer ones are cut.
MAX_PROGRESS_MESSAGE_CHARS = 4096


def payload_cap(max_message_bytes: int) -> int:
    """The largest JSON payload (result, chunk) that fits a message of ``max_message_bytes``."""
    return max_message_bytes - ENVELOPE_BYTES
