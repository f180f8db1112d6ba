"""Finding @mentions in a message's text: a pure function, shared rules with static/chat/room.js."""

import re

# Handles are accounts.User usernames: 1 to 30 of [A-Za-z0-9_-].
HANDLE = re.compile(r"[A-Za-z0-9_-]{1,30}")
# Not preceded by a word character, '.', '+', '/', '=', '@' or '-' (so not the
# tail of an e-mail address or a path), not followed by another handle
# character or '@' (so not the head of "user@host").
MENTION = re.compile(r"(?<![\w.+/=@-])@([A-Za-z0-9_-]{1,30})(?![A-Za-z0-9_@-])")
# Anything that looks like a link is taken out before looking for mentions:
# "https://example.com/@alice" and "www.example.com/@alice" mention nobody.
URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)\S+", re.IGNORECASE)
# `@here`: everyone present in the room (so no user can be called "here").
HERE = "here"
# A message may name at most this many people; the rest are not notified.
MAX_MENTIONS = 50


def parse_mentions(text: str) -> tuple[list[str], bool]:
    """The lowercased handles `text` mentions (in order, no repeats), and whether it says @here."""
    handles: list[str] = []
    here = False
    for match in MENTION.finditer(URL.sub(" ", text)):
        handle = match.group(1).lower()
        if handle == HERE:
            here = True
        elif handle not in handles and len(handles) < MAX_MENTIONS:
            handles.append(handle)
    return handles, here
