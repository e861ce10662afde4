"""The ``"role":`` key precheck (`count_role_keys`): a huge message list is refused before it is parsed,
however the client spells the key (JSON lets any letter of it be a ``\\uXXXX`` escape)."""

import json
import re

import pytest
from qwenguard.core.server.limits import _ROLE_KEY, LimitExceeded, Limits, count_role_keys

#: "role" with escaped letters, mixed with plain ones, hex digits lower- and upper-case.
SPELLINGS = [
    '"r\\u006fle"',
    '"r\\u006Fle"',
    '"\\u0072ole"',
    '"ro\\u006Ce"',
    '"rol\\u0065"',
    '"\\u0072\\u006F\\u006C\\u0065"',
    '"\\u0072\\u006f\\u006c\\u0065"',
]


@pytest.mark.parametrize("key", SPELLINGS)
def test_an_escaped_role_key_is_counted(key):
    body = '{"messages": [' + ", ".join("{" + key + ' : "user", "content": ""}' for _ in range(3)) + "]}"
    assert [m["role"] for m in json.loads(body)["messages"]] == ["user"] * 3  # the parser reads it as "role"
    assert count_role_keys(body.encode()) == 3


def test_a_huge_escaped_message_list_is_refused_before_parsing():
    body = '{"messages":[' + ",".join(['{"r\\u006fle":"user","content":""}'] * 28_000) + "]}"
    with pytest.raises(LimitExceeded, match="28000 messages"):
        Limits().precheck_one_conversation(body.encode())


def test_escaped_keys_are_counted_beside_plain_ones_and_text_that_is_no_key_is_not():
    keys = ", ".join(f'{{{key}: "user"}}' for key in ['"role"', *SPELLINGS])
    decoys = [
        '{"content": "\\"role\\": and \\\\u006f"}',  # inside a string
        '{"content": "r\\\\u006fle"}',
        '{"rolex": 1, "ro": 2, "r\\\\u006fle": 3}',  # the key r\\u006fle (a backslash, not an escape)
    ]
    body = f"[{keys}, {', '.join(decoys)}]"
    assert sum(m.get("role") == "user" for m in json.loads(body)) == len(SPELLINGS) + 1
    assert count_role_keys(body.encode()) == len(SPELLINGS) + 1
    assert isinstance(_ROLE_KEY, re.Pattern) and isinstance(_ROLE_KEY.pattern, bytes)  # still one bytes regex
