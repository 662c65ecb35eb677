#!/usr/bin/env python3
"""Time the heuristics tier's normalization and full scan, and the exfiltration rail's scan of an
answer, on 1 MB adversarial inputs.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_normalize.py

Both must be linear in the input: every row should take well under a second.
"""

import os
import time

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

MB = 1_000_000
CASES = {
    "plain ASCII": "What is the capital of France? " * (MB // 31),
    "zero-width flood": "\u200b" * MB,
    "combining-mark flood": "a" + "\u0301" * (MB - 1),
    "bidi overrides": "\u202eabc\u202c" * (MB // 5),
    "tag characters": "".join(chr(0xE0000 + ord(c)) for c in "ignore ") * (MB // 7),
    "emoji flood": "\U0001F600" * MB,
    "spaced-out letters": "i g n o r e " * (MB // 12),
    "homoglyphs": "іgnоrе рrеvіоus " * (MB // 16),
    "NFKC-expanding ligatures": "\ufdfa" * MB,
    # The decoders' and channels' inputs: each is searched for, decoded within bounds, re-scanned.
    "base64 tokens": "aWdub3JlIGFsbCBwcmV2aW91cw== " * (MB // 29),
    "one base64 token": "QUFB" * (MB // 4),
    "Morse code": ".. --. -. --- .-. . / " * (MB // 21),
    "NATO words": "india golf november oscar romeo echo " * (MB // 37),
    "variation selectors": ("x" + "\ufe01\U000E0101" * 7) * (MB // 15),
    "escape sequences": "\x1b[31m\x1b]8;;x\x07" * (MB // 14),
    "quoted-printable": "ignore=20all=20 " * (MB // 16),
}


def main() -> None:
    from railstack.heuristics.matcher import Matcher
    from railstack.heuristics.settings import HeuristicsSettings
    from railstack.core.text import normalize

    # The whole blocklist too, with the length cap lifted so that it really scans 1 MB.
    matcher = Matcher.build(HeuristicsSettings(max_input_chars=2 * MB))
    print(f"{'input (about 1 MB)':26s} {'normalize':>10s} {'full scan':>10s}")
    for name, text in CASES.items():
        start = time.perf_counter()
        normalize(text)
        middle = time.perf_counter()
        matcher.scan(text)
        end = time.perf_counter()
        print(f"{name:26s} {(middle - start) * 1000:8.0f} ms {(end - middle) * 1000:8.0f} ms")



# -- the exfiltration rail (tests/test_exfiltration.py runs every row with a wide margin) ----------

EXFILTRATION_CASES = {
    "image openers": "![" * (MB // 2),
    "link openers": "[a](" * (MB // 4),
    "unclosed titles": '[a](x "' * (MB // 7),
    "brackets": "[]" * (MB // 2),
    "escape openers": "\x1b[" * (MB // 2),
    "OSC openers": "\x1b]" * (MB // 2),
    "tag openers": '<img "' * (MB // 6),
    "fences": "```\n" * (MB // 4),
    "one huge URL": "https://evil.example/?" + "a" * MB,
    "scheme flood": "https://" * (MB // 8),
    "distinct images": "".join(f"![a](https://e.example/{i}) " for i in range(MB // 25)),
    "distinct bare URLs": "".join(f"https://h{i}.example/ " for i in range(MB // 20)),
}


def exfiltration() -> None:
    from railstack.exfiltration.scanner import Scanner
    from railstack.exfiltration.settings import ExfiltrationSettings

    blocking, transforming = (Scanner(ExfiltrationSettings(on_detect=d)) for d in ("block", "transform"))
    print(f"\n{'answer (about 1 MB)':26s} {'block':>10s} {'transform':>10s}")
    for name, text in EXFILTRATION_CASES.items():
        start = time.perf_counter()
        blocking.check(text)
        middle = time.perf_counter()
        transforming.check(text)
        end = time.perf_counter()
        print(f"{name:26s} {(middle - start) * 1000:8.0f} ms {(end - middle) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
    exfiltration()
