"""JSON lines' framing, shared by the broker's front end and the client: how long a line
may be, and how the bytes read become whole lines. Imports nothing, so the client can use
it without the broker."""

# Room on a JSON-lines publish around its body: names, properties and headers. AMQP carries
# a message's properties in one frame of at most 128 KiB; JSON's escapes can make them a few
# times longer.
LINE_ENVELOPE_BYTES = 1024 * 1024


def max_line_bytes_for(max_message_bytes):
    """The longest JSON line a side must read: a body of the largest message in base64
    (4 bytes for every 3), with room for the rest of the publish."""
    return 4 * -(-max_message_bytes // 3) + LINE_ENVELOPE_BYTES


# A read whose first line (or the end of a line begun before) is this long is cut into
# memoryview slices, not copies, so that the line of a big body is decoded from the read
# itself. A read of shorter lines is split by one call in C, which costs less than a
# Python step per line. Only the first line is looked at: counting every newline first
# cost a pass over each read, 2% of a 100-byte publish (callgrind).
VIEWED_LINE_BYTES = 4096


def whole_lines(partial, data):
    """(the whole lines of `partial` + `data`, the start of the next line). Only `data` is
    searched for newlines, and a line arriving in many reads grows in place, so a long line
    costs linear time. The start returned is what to pass as `partial` with the next read.
    Lines are bytes-like (bytes, bytearray or memoryview): decode them with str(line, "utf-8").
    A memoryview is of `data`, so `data` must not change while its lines are used."""
    find = data.find
    newline = find(b"\n")
    if newline < VIEWED_LINE_BYTES:         # short lines, or none ends here (-1)
        lines = data.split(b"\n")
        if partial:
            head = partial if type(partial) is bytearray else bytearray(partial)
            head += lines[0]
            lines[0] = head
        return lines, lines.pop()
    view, lines, start = memoryview(data), [], 0
    if partial:
        head = partial if type(partial) is bytearray else bytearray(partial)
        head += view[:newline]
        lines.append(head)
        start, newline = newline + 1, find(b"\n", newline + 1)
    while newline >= 0:
        lines.append(view[start:newline])
        start, newline = newline + 1, find(b"\n", newline + 1)
    return lines, bytearray(view[start:]) if start < len(data) else b""
