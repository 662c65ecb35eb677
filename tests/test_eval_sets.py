"""The labelled attack-family sets, the benign corpora and the evaluation script's bookkeeping."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # eval_heuristics imports the other two by name
    spec.loader.exec_module(module)
    return module


af = _script("attack_families")
benign_sources = _script("benign_sources")
eval_heuristics = _script("eval_heuristics")

ROWS = {split: af.generate(split) for split in af.SPLITS}


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def test_the_sets_are_the_same_in_every_process_whatever_the_hash_seed():
    code = (
        f"import sys, json, hashlib; sys.path.insert(0, {str(SCRIPTS)!r}); import attack_families as af; "
        "print(hashlib.sha256(json.dumps(af.generate('dev') + af.generate('heldout'), "
        "ensure_ascii=False).encode()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True,
                       check=True).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {_digest(ROWS["dev"] + ROWS["heldout"])}


@pytest.mark.parametrize("split", af.SPLITS)
def test_every_class_has_attacks_and_benign_counterparts_in_each_split(split):
    rows = ROWS[split]
    for cls in af.CLASSES:
        labels = [r["label"] for r in rows if r["class"] == cls]
        assert labels.count("attack") >= (0 if cls in af.BENIGN_ONLY else 40), cls
        assert labels.count("attack") == 0 or cls not in af.BENIGN_ONLY, cls
        assert labels.count("benign") >= 25, cls
    assert {r["label"] for r in rows} == {"attack", "benign"}
    assert {r["source"] for r in rows} == {af.SOURCE}
    assert {r["split"] for r in rows} == {split}
    for row in rows:
        assert isinstance(row["text"], str) and row["text"], row
    keys = [json.dumps([r["text"], r.get("answer"), r.get("messages")], ensure_ascii=False) for r in rows]
    assert len(set(keys)) == len(keys), "duplicate rows"


def test_answer_and_tool_rows_have_the_shape_check_rows_takes():
    for row in ROWS["dev"] + ROWS["heldout"]:
        if row["class"] == "output-exfiltration":
            assert row["answer"] and "messages" not in row
        if row["class"] == "tool-result-injection":
            *_, call, result = row["messages"]
            assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == result["tool_call_id"]
            assert result["role"] == "tool" and result["content"]
            json.loads(call["tool_calls"][0]["function"]["arguments"])


def _split_pools() -> list[tuple[str, list, list]]:
    pools = []
    for name, value in vars(af).items():
        if isinstance(value, dict) and set(value) == set(af.SPLITS) and all(isinstance(v, list) for v in value.values()):
            pools.append((name, value["dev"], value["heldout"]))
    return pools


def test_dev_and_heldout_are_built_from_disjoint_pools():
    pools = _split_pools()
    assert {"OVERRIDE", "DOCUMENTS", "FAKE_TURNS", "EXTRACTION_ASKS", "CONTROL", "EXFIL_HOSTS"} <= {p[0] for p in pools}
    for name, dev, heldout in pools:
        plain = lambda items: {json.dumps(i) for i in items if not callable(i) and "function" not in repr(i)}  # noqa: E731
        assert not plain(dev) & plain(heldout), name
    for name, kinds in af.FORMAT_USES.items():
        assert set(kinds) == set(af.SPLITS), name


def test_no_carrier_payload_or_pool_sentence_is_in_both_splits():
    dev, heldout = ROWS["dev"], ROWS["heldout"]
    for field in ("carrier", "payload", "text"):
        assert not {r.get(field) for r in dev} - {None} & {r.get(field) for r in heldout}, field
    # Any sentence of one split's pools inside a row of the other split would be a shared phrasing.
    for split, other in (("dev", heldout), ("heldout", dev)):
        other_text = "\n".join(json.dumps([r["text"], r.get("answer"), r.get("messages")], ensure_ascii=False)
                               for r in other)
        for name, *lists in _split_pools():
            for item in lists[af.SPLITS.index(split)]:
                for s in (item if isinstance(item, tuple) else (item,)):
                    if isinstance(s, str) and len(s) > 20:
                        assert json.dumps(s, ensure_ascii=False)[1:-1] not in other_text, (name, s)


def test_encoded_rows_decode_back_to_their_payload():
    decoded = 0
    for row in ROWS["dev"] + ROWS["heldout"]:
        if "encoded" in row:
            kind = row["class"].removeprefix("encoded-")
            assert row["encoded"] in row["text"]
            assert af.decode(kind, row["encoded"]) == row["payload"]
            decoded += 1
    assert decoded >= 2 * 13 * 40


def test_letter_alphabets_match_the_published_tables():
    rng = af.random.Random(0)
    assert af.encode("morse", "sos", rng) == "... --- ..."
    assert af.encode("nato", "ab", rng) == "Alfa Bravo"
    assert af.encode("braille", "hi", rng) == "⠓⠊"
    assert af.encode("atbash", "Wizard", rng) == "Draziw"
    assert af.encode("rot13", "Hello", rng) == "Uryyb"
    assert af.decode("morse", ".... ..  / - .... . .-. .") == "hi there"
    assert af.decode("nato", "Hotel India | Yankee Oscar") == "hi yo"
    assert af.decode("braille", "⠓⠊\u2800⠽⠕") == "hi yo"
    assert af.decode("leetspeak", "h4x0r") == "haxor"
    assert af.decode("mime-word", "=?utf-8?b?aMOpbGxv?=") == "héllo"
    assert af.decode("quoted-printable", "caf=C3=A9=20ok") == "café ok"


def test_invisible_rows_carry_their_payload():
    seen = {"vs": 0, "zw": 0, "tags": 0}
    for row in ROWS["dev"] + ROWS["heldout"]:
        if row["label"] != "attack":
            continue
        if row["class"] == "invisible-variation-selectors":
            assert af.vs_decode(row["text"]).decode() == row["payload"]
            seen["vs"] += 1
        elif row["class"] == "invisible-zero-width":
            assert af.zw_decode(row["text"], *row["bits"]).decode() == row["payload"]
            seen["zw"] += 1
        elif row["class"] == "invisible-tags":
            assert af.tags_decode(row["text"]) == row["payload"]
            seen["tags"] += 1
    assert min(seen.values()) >= 2 * 36
    # One byte per variation selector, both blocks: 0x00-0x0F in U+FE00.., 0x10-0xFF in U+E0100..
    assert af.vs_encode(b"\x00\x0f\x10\xff") == "\ufe00\ufe0f\U000e0100\U000e01ef"


def test_the_benign_loader_gives_every_shared_source_and_over_a_thousand_external_prompts():
    shared = list(benign_sources.shared_rows())
    sources = {r["source"] for r in shared}
    assert "sources/benign/self_instruct_prompts.jsonl" in sources
    assert any(s.startswith("safety_eval.jsonl: ") for s in sources)
    assert any(s.startswith("injection_eval.jsonl: ") for s in sources)
    external = list(benign_sources.external_rows())
    per_source = {e.source: sum(r["source"] == e.source for r in external) for e in benign_sources.EXTERNAL}
    assert sum(per_source.values()) >= 1000, per_source
    assert all(per_source.values()), per_source
    assert max(len(r["text"]) for r in external) > 20_000  # long real-world documents are in
    assert any("def " in r["text"] and "return" in r["text"] for r in external)  # and code
    assert all(r["label"] == "benign" and r["text"].strip() for r in shared + external)


def test_an_external_corpus_not_installed_as_pinned_is_an_error_saying_what_to_install(monkeypatch, capsys):
    known = benign_sources.EXTERNAL[0]
    absent = benign_sources.External(**{**vars(known), "package": "no-such-package-railstack"})
    with pytest.raises(benign_sources.MissingSource, match="pip install no-such-package-railstack==0.26.0"):
        list(absent.texts())
    other = benign_sources.External(**{**vars(known), "sha256": "0" * 64})
    with pytest.raises(benign_sources.MissingSource, match="sha256"):
        list(other.texts())
    monkeypatch.setattr(benign_sources, "EXTERNAL", [absent])
    monkeypatch.setattr(sys, "argv", ["benign_sources.py"])
    assert benign_sources.main() == 2
    assert "pip install no-such-package-railstack==0.26.0" in capsys.readouterr().err


def _rows(group: str, label: str, n: int) -> list[dict]:
    return [{"group": group, "label": label, "source": "s", "viewable": True} for _ in range(n)]


def test_a_benign_source_passes_at_one_percent_and_fails_above_it_or_on_an_error():
    rows = _rows("source a", "benign", 100) + _rows("source b", "benign", 100) + _rows("source c", "benign", 100)
    verdicts = ["allow"] * 300
    verdicts[0] = "block"  # a: 1 of 100
    verdicts[100] = verdicts[101] = "block"  # b: 2 of 100
    results = [{"row": i, "verdict": v} for i, v in enumerate(verdicts)]
    results[200] = {"row": 200, "error": "boom"}  # c: no block, one error
    lines = {g: (n, b, e, v) for g, _, n, b, e, v in eval_heuristics.table(eval_heuristics.tally(rows, results))}
    assert lines["source a"] == (100, 1, 0, "PASS")
    assert lines["source b"] == (100, 2, 0, "FAIL")
    assert lines["source c"] == (100, 0, 1, "FAIL")
    assert lines["ALL"] == (300, 3, 1, "")


def test_a_generated_benign_row_counts_in_its_class_and_once_in_the_totals():
    rows = [{"group": "class x", "label": "benign", "source": "gen", "viewable": True},
            {"group": "class x", "label": "attack", "source": "gen", "viewable": True}]
    results = [{"row": 0, "verdict": "block"}, {"row": 1, "verdict": "block"}]
    lines = {(g, lab): (n, b, v) for g, lab, n, b, _, v in eval_heuristics.table(eval_heuristics.tally(rows, results))}
    assert lines[("class x", "benign")] == (1, 1, "")
    assert lines[("source gen", "benign")] == (1, 1, "FAIL")
    assert lines[("ALL", "benign")] == (1, 1, "")
    assert lines[("ALL", "attack")] == (1, 1, "")


@pytest.mark.parametrize("flag", ["--show-fp", "--show-misses"])
def test_the_eval_script_refuses_to_print_heldout_rows(flag, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["eval_heuristics.py", flag])
    with pytest.raises(SystemExit) as exit_:
        eval_heuristics.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--split dev only" in err


def test_rows_are_shown_only_when_viewable(capsys):
    rows = [{"group": "class x", "label": "attack", "text": "seen-miss", "viewable": True},
            {"group": "source ext", "label": "benign", "text": "never-shown", "viewable": False}]
    results = [{"row": 0, "verdict": "allow"}, {"row": 1, "verdict": "block", "rail": "r", "reason": "why"}]
    eval_heuristics.show(rows, results, misses=True, fps=True)
    err = capsys.readouterr().err
    assert "seen-miss" in err and "never-shown" not in err


TOPIC_SET = SCRIPTS / "data" / "topic_competitors.jsonl"
TOPIC_KINDS = {"paraphrase": ("competitors", 120), "on_topic": ("other", 160), "unrelated": ("other", 70),
               "company_in_passing": ("other", 90)}
# The examples of the seed's `define user ask about competitors`, which the set was written against; any config's
# own examples of that intent are added below, so an edit to them is checked too.
COMPETITOR_EXAMPLES = [
    "How do you compare to Globex?", "Is Initech better than you?", "What does Globex offer that you don't?",
    "Should I choose Initech instead of your product?", "Which is cheaper, you or Globex?",
    "Tell me about your competitors.", "What do you think of Initech's products?",
    "Why should I pick you over the competition?",
]


def _topic_rows() -> list[dict]:
    lines = TOPIC_SET.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _colang_examples(configs: Path, intent: str) -> list[str]:
    found = []
    for path in sorted(configs.rglob("*.co")):
        block = re.search(rf"^define user {re.escape(intent)}\n((?:[ \t]+\".*\"\n?)+)", path.read_text(), re.M)
        if block:
            found += re.findall(r"\"(.*)\"", block.group(1))
    return found


def test_topic_set_counts_per_kind_label_and_split():
    rows = _topic_rows()
    for row in rows:
        assert set(row) == {"text", "label", "kind", "split"}, row
        assert isinstance(row["text"], str) and row["text"] == row["text"].strip() and row["text"], row
        assert row["kind"] in TOPIC_KINDS and row["label"] == TOPIC_KINDS[row["kind"]][0], row
        assert row["split"] in ("dev", "heldout"), row
    for kind, (_, least) in TOPIC_KINDS.items():
        splits = [r["split"] for r in rows if r["kind"] == kind]
        assert len(splits) >= least, kind
        assert abs(splits.count("dev") - splits.count("heldout")) <= 1, kind
    labels = [r["label"] for r in rows]
    assert labels.count("competitors") >= 100 and labels.count("other") >= 300
    # The hard negatives a deny-list of the names gets wrong.
    named = [r for r in rows if r["kind"] == "company_in_passing" and re.search(r"globex|initech", r["text"], re.I)]
    assert len(named) >= 25
    unnamed = [r for r in rows if r["kind"] == "paraphrase" and not re.search(r"globex|initech", r["text"], re.I)]
    assert len(unnamed) >= 20


def test_topic_set_has_no_repeated_text_and_disjoint_splits():
    keys = [_normal(r["text"]) for r in _topic_rows()]
    assert len(set(keys)) == len(keys), sorted(k for k in set(keys) if keys.count(k) > 1)
    by_split = {s: {_normal(r["text"]) for r in _topic_rows() if r["split"] == s} for s in ("dev", "heldout")}
    assert by_split["dev"] and by_split["heldout"] and not by_split["dev"] & by_split["heldout"]


def test_topic_set_leaves_out_the_rails_own_examples():
    configured = _colang_examples(SCRIPTS.parent / "configs", "ask about competitors")
    examples = {_normal(e) for e in COMPETITOR_EXAMPLES + configured}
    for row in _topic_rows():
        text = _normal(row["text"])
        assert not any(e in text for e in examples), row["text"]


def test_topic_set_example_reader_finds_a_flows_examples(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "rails.co").write_text(
        'define user ask about competitors\n  "one?"\n  "two."\n\ndefine user ask about competitors later\n  "no"\n')
    assert _colang_examples(tmp_path, "ask about competitors") == ["one?", "two."]


def test_the_seed_topic_threshold_is_its_dev_calibration_and_holds_out():
    eval_intents = _script("eval_intents")
    rows = [json.loads(line) for line in eval_intents.DATA.read_text(encoding="utf-8").splitlines()]
    scores, configured = asyncio.run(eval_intents.scores(eval_intents.REPO / "configs" / "seed", [r["text"] for r in rows]))
    scored = list(zip(rows, scores))
    assert eval_intents.calibrate([p for p in scored if p[0]["split"] == "dev"], 0.01) == pytest.approx(configured, abs=0.01)
    heldout = [(r, s >= configured) for r, s in scored if r["split"] == "heldout"]
    recall = [hit for r, hit in heldout if r["label"] == "competitors"]
    false_positives = [hit for r, hit in heldout if r["label"] != "competitors"]
    # The README's numbers (74.7% and 3.9%), with room for another CPU's rounding.
    assert sum(recall) / len(recall) > 0.7 and sum(false_positives) / len(false_positives) < 0.06
