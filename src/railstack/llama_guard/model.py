"""Safety classification with a calibrated score: Llama Guard 3 and 4 (text), ShieldGemma.

- The prompt is built in the model's own format: Meta's Llama Guard task text (``User`` to judge
  the client's last turn, ``Agent`` with the user turn present to judge the answer), or the
  checkpoint's chat template when it has one (``prompt: auto``); both give the same text.
  ShieldGemma gets one policy prompt per harm type.
- The verdict comes from one prefill: the probability of the "unsafe" answer token (Meta's
  method; P(Yes) against P(No) for ShieldGemma) at the position where the model starts its
  answer. That position and the answer token ids are found by tokenizing the prompt followed
  by each answer word, not hard-coded. Only an unsafe verdict pays for a short greedy decode
  of the category line.
- Checks of concurrent requests share forward passes through the engine's micro-batcher (left
  padding with position ids from the attention mask, so a batched score equals a single one).
  The remote engine asks an OpenAI-compatible completions server (vLLM) for the log-probability
  of the first answer token instead.
- A conversation longer than ``max_prompt_tokens`` loses its oldest turns; the turn being
  judged is never cut (a judged turn that alone does not fit fails the check).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from railstack.overload.stages import Stage
from railstack.engines.batcher import Batcher
from railstack.engines.cache import ScoreCache
from railstack.engines.loading import load_checkpoint, missing_model_message
from railstack.llama_guard.settings import LlamaGuardSettings

log = logging.getLogger("railstack.llama_guard")

# MLCommons hazards as Llama Guard 3 names them.
HAZARDS = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

LLAMA_GUARD_TASK = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)

# ShieldGemma's harm types, as its model card words the policies for a prompt; on the answer
# "The prompt shall not contain or seek generation of" becomes "The chatbot shall not generate".
SHIELDGEMMA_POLICIES = {
    "dangerous_content": (
        "No Dangerous Content",
        "content that harming oneself and/or others (e.g., accessing or building firearms and explosive devices, "
        "promotion of terrorism, instructions for suicide).",
    ),
    "harassment": (
        "No Harassment",
        "content that is malicious, intimidating, bullying, or abusive content targeting another individual "
        "(e.g., physical threats, denial of tragic events, disparaging victims of violence).",
    ),
    "hate_speech": (
        "No Hate Speech",
        "content that targeting identity and/or protected attributes (e.g., racial slurs, promotion of "
        "discrimination, calls to violence against protected groups) or dehumanizing/belittling/vilifying on the "
        "bases of race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, "
        "gender, gender identity, caste, or any other protected status. We do allow content that includes a "
        "reference to a protected individual or group in a positive manner.",
    ),
    "sexually_explicit": (
        "No Sexually Explicit Information",
        "content that contains references to sexual acts or other lewd content (e.g., sexually graphic "
        "descriptions, content aimed at causing arousal). Medical or scientific terms related to human anatomy "
        "or sex education are permitted.",
    ),
}

SHIELDGEMMA_TASK = (
    "You are a policy expert trying to help determine whether {subject} is in violation of the defined safety "
    "policies.\n\n{turns}Our safety principle is defined in the below:\n\n* \"{name}\": {subject_rule} "
    "{rule}\n\nDoes the {judged} violate the above principle? Your answer must start with 'Yes' or 'No'. "
    "And then walk through step by step to be sure we answer correctly."
)


@dataclass(frozen=True)
class Family:
    name: str
    marker: str  # a special token only this family's tokenizers have
    unsafe: str  # the answer word of a violation
    safe: str
    pairwise: bool  # score over the two answer tokens (ShieldGemma) or the whole vocabulary (Meta's)
    wrap: str  # one user turn in the family's chat format, with the generation prompt; {} is the turn
    defaults: tuple[str, ...]  # the categories a checkpoint of this family was trained on
    decodes: bool  # whether an unsafe answer goes on with a category line


_S1_S13 = tuple(f"S{i}" for i in range(1, 14))
FAMILIES = {
    f.name: f
    for f in (
        Family(
            "llama_guard_3", "<|start_header_id|>", "unsafe", "safe", False,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            (*_S1_S13, "S14"), True,
        ),
        Family(
            "llama_guard_4", "<|header_start|>", "unsafe", "safe", False,
            "<|begin_of_text|><|header_start|>user<|header_end|>\n\n{}<|eot|><|header_start|>assistant<|header_end|>\n\n",
            _S1_S13, True,
        ),
        Family(
            "shieldgemma", "<start_of_turn>", "Yes", "No", True,
            "<bos><start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
            tuple(SHIELDGEMMA_POLICIES), False,
        ),
    )
}


class NotASafetyModel(ValueError):
    """The checkpoint, or the settings, do not fit a supported safety classifier."""


class TurnTooLong(ValueError):
    """The turn being judged does not fit ``max_prompt_tokens`` on its own."""


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    description: str = ""

    def line(self) -> str:
        """The policy line after ``S1: `` (name ending in a full stop, then any description)."""
        name = self.name if self.name.endswith(".") else f"{self.name}."
        return f"{name}\n{self.description}" if self.description else name


@dataclass(frozen=True)
class Assessment:
    score: float
    categories: tuple[tuple[str, Optional[str]], ...]  # (code, name); name None for a code the policy lacks
    prompt_tokens: int
    dropped_turns: int
    cached: bool = False


def parse_categories(text: str) -> list[str]:
    """Category codes from what the model wrote after ``unsafe``: ``S1,S2``, ``S1, S2``, ``s10``,
    ``unsafe\\nS1``, each code once, in order."""
    return list(dict.fromkeys(f"S{int(n)}" for n in re.findall(r"(?<![A-Za-z])[Ss]\s?(\d{1,2})(?!\d)", text)))


def alternating(dialogue: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """User and assistant turns that alternate from a user turn, as the prompt format needs:
    neighbours of one role are joined, an assistant turn before any user turn is dropped."""
    turns: list[tuple[str, str]] = []
    for role, text in dialogue:
        if turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]}\n\n{text}")
        elif turns or role == "user":
            turns.append((role, text))
    return turns


class SafetyModel:
    """One safety checkpoint: its tokenizer and prompt format, and the engine that scores."""

    def __init__(self, settings: LlamaGuardSettings, stage: Optional[Stage] = None):
        from transformers import AutoConfig, AutoTokenizer

        self.settings = settings
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
            config = AutoConfig.from_pretrained(settings.model)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"llama_guard: {missing_model_message(settings.model, exc)}") from exc
        self.family = _family(settings, self.tokenizer)
        self.template = self._uses_template()
        self.categories = self._categories(config)
        self.lead, self.unsafe_id, self.safe_id = self._answer_tokens()
        self.cache: ScoreCache[Assessment] = ScoreCache(settings.cache_size)
        if settings.engine == "remote":
            self.engine: Any = RemoteEngine(self, stage)
        else:
            self.engine = LocalEngine(self, stage)
        log.info(
            "llama_guard: %s (%s, %s prompt, %s engine), categories %s",
            settings.model, self.family.name, "template" if self.template else "built-in", settings.engine,
            ",".join(c.code for c in self.categories),
        )

    # -- prompt --------------------------------------------------------------------------------

    def _uses_template(self) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.settings.prompt == "template" and not has:
            raise NotASafetyModel(f"llama_guard: prompt is 'template' but {self.settings.model!r} has no chat template")
        # ShieldGemma's template wants one guideline per call; its policy prompts are built here.
        return has and self.settings.prompt != "builtin" and self.family.name != "shieldgemma"

    def _categories(self, config: Any) -> list[Category]:
        s = self.settings
        if self.family.name == "shieldgemma":
            policy = {code: Category(code, name, rule) for code, (name, rule) in SHIELDGEMMA_POLICIES.items()}
        else:
            policy = {code: Category(code, HAZARDS[code]) for code in self._default_codes(config)}
        for custom in s.custom_categories:
            policy[custom.code] = Category(custom.code, custom.name, custom.description)
        if s.categories is not None:
            unknown = [c for c in s.categories if c not in policy]
            if unknown:
                raise NotASafetyModel(f"llama_guard.categories: {unknown} are not in {s.model!r}'s policy")
            policy = {code: policy[code] for code in s.categories}
        unknown = [c for c in s.excluded_categories if c not in policy]
        if unknown:
            raise NotASafetyModel(f"llama_guard.excluded_categories: {unknown} are not in {s.model!r}'s policy")
        kept = [c for code, c in policy.items() if code not in s.excluded_categories]
        if not kept:
            raise NotASafetyModel("llama_guard: every category is excluded; turn the rail off instead")
        if self.family.name != "shieldgemma":
            bad = [c.code for c in kept if not re.fullmatch(r"S[1-9][0-9]?", c.code)]
            if bad:
                raise NotASafetyModel(f"llama_guard: Llama Guard category codes are S1, S2, ...: {bad}")
        return sorted(kept, key=lambda c: int(c.code[1:]) if c.code[1:].isdigit() else 0)

    def _default_codes(self, config: Any) -> tuple[str, ...]:
        """The categories the checkpoint was trained on: those its chat template lists when it has
        one, else the family's (Llama Guard 3 1B, a 16-layer Llama 3.2, leaves out S14)."""
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self._render_template([("user", "x")], None)
            listed = re.search(r"<BEGIN UNSAFE CONTENT CATEGORIES>\n(.*?)<END UNSAFE CONTENT CATEGORIES>", rendered, re.S)
            codes = re.findall(r"^(S\d+):", listed.group(1), re.M) if listed else []
            if codes:
                return tuple(c for c in codes if c in HAZARDS)
        defaults = self.family.defaults
        if self.family.name == "llama_guard_3" and getattr(config, "num_hidden_layers", 32) <= 16:
            return _S1_S13
        return defaults

    def _render_template(self, turns: list[tuple[str, str]], categories: Optional[list[Category]]) -> str:
        extra: dict[str, Any] = {}
        if categories is not None:
            extra["categories"] = {c.code: c.line() for c in categories}
            extra["excluded_category_keys"] = []
        last_error: Optional[Exception] = None
        # The 8B template reads string contents, the 1B one text parts: use whichever shows the turns.
        for content in (lambda t: t, lambda t: [{"type": "text", "text": t}]):
            messages = [{"role": role, "content": content(text)} for role, text in turns]
            try:
                rendered = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, **extra
                )
            except Exception as exc:  # noqa: BLE001 - the other content form may render
                last_error = exc
                continue
            if all(text.strip() in rendered for _, text in turns):
                return rendered
        raise NotASafetyModel(f"llama_guard: {self.settings.model!r}'s chat template does not render the turns ({last_error})")

    def builtin_prompt(self, turns: list[tuple[str, str]], categories: Optional[list[Category]] = None) -> str:
        """Meta's Llama Guard prompt for ``turns`` (alternating, from a user turn), judging the last."""
        categories = self.categories if categories is None else categories
        role = "User" if turns[-1][0] == "user" else "Agent"
        conversation = "\n\n".join(f"{'User' if r == 'user' else 'Agent'}: {t.strip()}" for r, t in turns)
        lines = "\n".join(f"{c.code}: {c.line()}" for c in categories)
        task = LLAMA_GUARD_TASK.format(role=role, categories=lines, conversation=conversation)
        return self.family.wrap.format(task)

    def prompt_text(self, turns: list[tuple[str, str]]) -> str:
        if self.template:
            return self._render_template(turns, self.categories)
        return self.builtin_prompt(turns)

    def shieldgemma_prompts(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(category code, prompt) for each harm type; ShieldGemma judges one exchange."""
        judged_role = turns[-1][0]
        user = next((t for r, t in reversed(turns) if r == "user"), "")
        shown = f"<start_of_turn>\nHuman Question: {user.strip()}\n<end_of_turn>\n\n"
        if judged_role == "assistant":
            shown += f"<start_of_turn>\nChatbot Response: {turns[-1][1].strip()}\n<end_of_turn>\n\n"
            subject, judged, subject_rule = "an AI response to prompt", "Chatbot Response", "The chatbot shall not generate"
        else:
            subject, judged, subject_rule = (
                "a user prompt", "human question", "The prompt shall not contain or seek generation of",
            )
        return [
            (c.code, self.family.wrap.format(SHIELDGEMMA_TASK.format(
                subject=subject, turns=shown, name=c.name, subject_rule=subject_rule, rule=c.description, judged=judged,
            )))
            for c in self.categories
        ]

    def _encode(self, text: str) -> list[int]:
        # The prompt spells out its own special tokens (<|begin_of_text|>...): add none.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        """The model input for a prompt: the tokens before the answer word, tokenized as the model
        saw prompt and answer together (a tokenizer can split the prompt's last whitespace
        differently when a word follows it)."""
        return tuple(self._encode(prompt + self.lead + self.family.safe)[:-1])

    def _answer_tokens(self) -> tuple[str, int, int]:
        """What follows the prompt before the answer word, and the ids of the two answer words.

        The prompt followed by each answer word is tokenized; the decision position is where the
        two differ, and it must be their last token. A chat template whose generation prompt stops
        short of the family's header separator (the model writes it first) gets the separator.
        """
        probe = [("user", "Hello there.")]
        lead = ""
        if self.template:
            rendered = self._render_template(probe, self.categories)
            tail = self.family.wrap[self.family.wrap.index("{}") + 2 :]
            short = tail.rstrip()
            if rendered.endswith(short) and not rendered.endswith(tail):
                lead = tail[len(short) :]
            prompt = rendered + lead
        elif self.family.name == "shieldgemma":
            prompt = self.shieldgemma_prompts(probe)[0][1]
        else:
            prompt = self.builtin_prompt(probe)
        unsafe, safe = self._encode(prompt + self.family.unsafe), self._encode(prompt + self.family.safe)
        if len(unsafe) != len(safe) or unsafe[:-1] != safe[:-1] or unsafe[-1] == safe[-1]:
            raise NotASafetyModel(
                f"llama_guard: {self.family.unsafe!r} and {self.family.safe!r} are not single tokens after the "
                f"prompt in {self.settings.model!r}'s tokenizer: not a {self.family.name} checkpoint"
            )
        return lead, unsafe[-1], safe[-1]

    def prompts(self, dialogue: tuple[tuple[str, str], ...], judged: str) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
        """The model inputs (category code or "", token ids) that judge the last ``judged`` turn,
        and how many old turns were dropped to fit ``max_prompt_tokens``."""
        turns = alternating(dialogue)
        if judged == "user":
            while turns and turns[-1][0] != "user":
                turns.pop()
        if not turns or turns[-1][0] != judged:
            raise ValueError(f"there is no {judged} turn to judge")
        budget = self.settings.max_prompt_tokens
        keep = len(turns)
        shortest = 1 if judged == "user" else 2
        lengths: list[int] = []  # each turn's tokens, counted only when the prompt is too long
        while True:
            kept = turns[len(turns) - keep :]
            built = self._build(kept)
            longest = max(len(ids) for _, ids in built)
            if longest <= budget:
                return built, len(turns) - keep
            excess = longest - budget
            if keep > shortest:
                lengths = lengths or [len(self._encode(text)) for _, text in turns]
                # Drop the oldest turns (in pairs, so the kept ones still start with a user turn)
                # until their own tokens cover the excess, then measure again.
                dropped = 0
                while keep > shortest and dropped < excess:
                    start = len(turns) - keep
                    dropped += lengths[start] + lengths[start + 1]
                    keep -= 2
                continue
            if judged == "assistant" and self._trim_question(turns, excess):
                continue  # the answer is judged; the question before it is context, and loses its start
            raise TurnTooLong(f"the judged turn needs {longest} prompt tokens, over max_prompt_tokens {budget}")

    def _trim_question(self, turns: list[tuple[str, str]], excess: int) -> bool:
        ids = self._encode(turns[-2][1])
        if len(ids) <= excess:
            return False
        # A few tokens more than the excess: decoding a cut can re-tokenize a little longer.
        turns[-2] = ("user", self.tokenizer.decode(ids[excess + 8 :]))
        return True

    def _build(self, turns: list[tuple[str, str]]) -> list[tuple[str, tuple[int, ...]]]:
        if self.family.name == "shieldgemma":
            return [(code, self.encode_prompt(p)) for code, p in self.shieldgemma_prompts(turns)]
        return [("", self.encode_prompt(self.prompt_text(turns)))]

    # -- scoring -------------------------------------------------------------------------------

    async def assess(self, dialogue: tuple[tuple[str, str], ...], judged: str) -> Assessment:
        """Score the last ``judged`` ("user" or "assistant") turn of ``dialogue``."""
        built, dropped = self.prompts(dialogue, judged)
        key = "\x00".join(f"{code}\x01{','.join(map(str, ids))}" for code, ids in built)
        cached = self.cache.get(key)
        if cached is not None:
            return Assessment(cached.score, cached.categories, cached.prompt_tokens, dropped, cached=True)
        threshold = self.settings.threshold
        results = await self.engine.score([(ids, threshold) for _, ids in built])
        names = {c.code: c.name for c in self.categories}
        score = max(s for s, _ in results)
        if self.family.name == "shieldgemma":
            codes = [code for (code, _), (s, _) in zip(built, results) if s >= threshold]
        else:
            codes = parse_categories(results[0][1] or "")
        found = Assessment(
            score, tuple((code, names.get(code)) for code in codes), max(len(ids) for _, ids in built), dropped
        )
        self.cache.put(key, found)
        return found

    def probability(self, logits: Any) -> Any:
        """P(unsafe) from the logits at the decision position (a batch of rows)."""
        import torch

        if self.family.pairwise:
            pair = logits[:, [self.safe_id, self.unsafe_id]].float()
            return torch.softmax(pair, dim=-1)[:, 1]
        return torch.softmax(logits.float(), dim=-1)[:, self.unsafe_id]


class LocalEngine:
    """The checkpoint in this process (transformers), behind the shared micro-batcher."""

    def __init__(self, safety: SafetyModel, stage: Optional[Stage]):
        from transformers import AutoModelForCausalLM

        s = safety.settings
        self.safety = safety
        _, self.model, self.device, self.precision = load_checkpoint(
            s, "llama_guard", AutoModelForCausalLM, safety.tokenizer
        )
        tokenizer = safety.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.stop_ids = sorted({i for i in (tokenizer.eos_token_id, *_end_of_turn_ids(tokenizer)) if i is not None})
        self.decodes = 0  # category lines decoded (for tests and benchmarks)
        self.batcher: Batcher[tuple[tuple[int, ...], float], tuple[float, Optional[str]]] = Batcher(
            f"llama-guard:{s.model}",
            self.forward,
            length=lambda item: len(item[0]),
            # A CPU prefill is compute-bound: a batch costs as much as its rows padded to the longest
            # one by one, so batching only adds padding there (scripts/bench_llama_guard.py).
            max_batch=s.max_batch or (32 if self.device.startswith("cuda") else 1),
            max_delay_s=s.max_delay_ms / 1000,
            stage=stage,
        )
        # Newer transformers name the cache argument `cache`; older ones `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.prefixes = self._policy_prefixes() if s.reuse_policy_prefix and safety.family.decodes else {}
        self.forward([(safety.encode_prompt(safety.family.wrap.format("warm-up")), 1.0)])

    async def score(self, items: list[tuple[tuple[int, ...], float]]) -> list[tuple[float, Optional[str]]]:
        return await self.batcher.score(items)

    def _padded(self, rows: list[tuple[int, ...]], before: int = 0) -> tuple[Any, Any, Any]:
        """Left-padded ids, attention mask and position ids: every row's last token is at the end,
        and its positions count from its own first token. ``before``: tokens already in a cache in
        front of every row (the mask covers them, the positions go on from them)."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), before + width), dtype=torch.long)
        mask[:, :before] = 1
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, before + width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, before:]
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _policy_prefixes(self) -> dict[tuple[int, ...], Any]:
        """The key/value cache of the fixed start of each judged role's prompt (task, policy, up to
        the first turn): the tokens two prompts with different conversations share."""
        import torch

        safety, prefixes = self.safety, {}
        for dialogue, judged in (((("user", "Hello there."),), "user"), ((("user", "Hi"), ("assistant", "Hello.")), "assistant")):
            one = safety.prompts(dialogue, judged)[0][0][1]
            other = safety.prompts(((("user", "Quite another question?"),) + dialogue[1:]), judged)[0][0][1]
            shared = next((i for i, (a, b) in enumerate(zip(one, other)) if a != b), 0)
            if shared >= 16:  # worth a cache
                with torch.inference_mode():
                    out = self.model(input_ids=torch.tensor([one[:shared]], device=self.device), use_cache=True)
                prefixes[tuple(one[:shared])] = getattr(out, self._cache_arg)
        return prefixes

    def _scores(self, rows: list[tuple[int, ...]], prefix: Optional[tuple[int, ...]]) -> list[float]:
        """P(unsafe) of each row: one forward pass, over the rows' own tokens after ``prefix`` when
        its cache is kept."""
        import torch

        extra: dict[str, Any] = {}
        if prefix is not None:
            cache = copy.deepcopy(self.prefixes[prefix])  # the forward pass extends it
            cache.batch_repeat_interleave(len(rows))
            extra = {self._cache_arg: cache, "use_cache": True}
            rows = [row[len(prefix) :] for row in rows]
        else:
            extra = {"use_cache": False}
        ids, mask, positions = self._padded(rows, len(prefix or ()))
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **extra)
            return self.safety.probability(out.logits[:, -1, :]).cpu().tolist()

    def forward(self, batch: list[tuple[tuple[int, ...], float]]) -> list[tuple[float, Optional[str]]]:
        """One prefill per prompt start in the batch (on the worker thread); the category line of
        unsafe rows."""
        groups: dict[Optional[tuple[int, ...]], list[int]] = {}
        for i, (row, _) in enumerate(batch):
            start = next((p for p in self.prefixes if len(row) > len(p) and row[: len(p)] == p), None)
            groups.setdefault(start, []).append(i)
        scores = [0.0] * len(batch)
        for prefix, members in groups.items():
            for i, score in zip(members, self._scores([batch[i][0] for i in members], prefix)):
                scores[i] = score
        lines: list[Optional[str]] = [None] * len(batch)
        unsafe = [i for i, (score, (_, threshold)) in enumerate(zip(scores, batch)) if score >= threshold]
        if unsafe and self.safety.family.decodes:
            for i, line in zip(unsafe, self.category_lines([batch[i][0] for i in unsafe])):
                lines[i] = line
        return list(zip(scores, lines))

    def category_lines(self, rows: list[tuple[int, ...]]) -> list[str]:
        """Greedy decode of what follows ``unsafe``: the category line."""
        import torch

        ids, mask, _ = self._padded([(*row, self.safety.unsafe_id) for row in rows])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=self.safety.settings.category_tokens,
                do_sample=False, pad_token_id=self.pad_id, eos_token_id=self.stop_ids or None,
            )
        self.decodes += len(rows)
        return self.safety.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


def _end_of_turn_ids(tokenizer: Any) -> list[Optional[int]]:
    found = []
    for token in ("<|eot_id|>", "<|eot|>", "<end_of_turn>"):
        i = tokenizer.convert_tokens_to_ids(token)
        found.append(i if isinstance(i, int) and i != tokenizer.unk_token_id else None)
    return found


class RemoteAnswerError(RuntimeError):
    """The remote server's answer does not carry what the score needs."""


class RemoteEngine:
    """The same scoring against an OpenAI-compatible completions server (vLLM): the prompt goes
    as token ids (no second BOS, no re-tokenization), the score is read from the first answer
    token's log-probabilities, and the category line is what the server greedily wrote after it."""

    def __init__(self, safety: SafetyModel, stage: Optional[Stage]):
        self.safety = safety
        self.stage = stage
        self.settings = safety.settings.remote
        self.served = self.settings.served_model or safety.settings.model
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        tokenizer = safety.tokenizer
        self.keys = {
            "unsafe": (f"token_id:{safety.unsafe_id}", tokenizer.decode([safety.unsafe_id])),
            "safe": (f"token_id:{safety.safe_id}", tokenizer.decode([safety.safe_id])),
        }

    def _client(self) -> Any:
        # An HTTP connection pool belongs to the event loop that opened it.
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            import httpx
            from openai import AsyncOpenAI

            limits = httpx.Limits(max_connections=self.settings.max_connections)
            self._clients[loop] = AsyncOpenAI(
                base_url=self.settings.base_url, api_key=self.settings.api_key, max_retries=0,
                timeout=self.safety.settings.timeout_s, http_client=httpx.AsyncClient(limits=limits),
            )
        return self._clients[loop]

    async def score(self, items: list[tuple[tuple[int, ...], float]]) -> list[tuple[float, Optional[str]]]:
        slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with slot:
            return list(await asyncio.gather(*(self._one(ids, threshold) for ids, threshold in items)))

    async def _complete(self, ids: list[int], max_tokens: int, logprobs: Optional[int]) -> Any:
        extra = {"return_tokens_as_token_ids": True} if logprobs else {}
        answer = await self._client().completions.create(
            model=self.served, prompt=ids, max_tokens=max_tokens, temperature=0, logprobs=logprobs, extra_body=extra
        )
        if not answer.choices:
            raise RemoteAnswerError("the completions server returned no choice")
        return answer.choices[0]

    def _logprob(self, top: dict, word: str) -> Optional[float]:
        return next((top[k] for k in self.keys[word] if k in top), None)

    async def _one(self, ids: tuple[int, ...], threshold: float) -> tuple[float, Optional[str]]:
        safety = self.safety
        decodes = safety.family.decodes
        choice = await self._complete(
            list(ids), 1 + (safety.settings.category_tokens if decodes else 0), self.settings.top_logprobs
        )
        tops = getattr(choice.logprobs, "top_logprobs", None) if choice.logprobs else None
        if not tops:
            raise RemoteAnswerError("the completions server returned no log-probabilities (is `logprobs` supported?)")
        unsafe, safe = self._logprob(tops[0], "unsafe"), self._logprob(tops[0], "safe")
        if unsafe is None and safe is None:
            raise RemoteAnswerError(
                f"neither {safety.family.unsafe!r} nor {safety.family.safe!r} is among the first token's top "
                f"{self.settings.top_logprobs}: the server runs another model or prompt format"
            )
        if safety.family.pairwise:
            low = -math.inf
            score = 1 / (1 + math.exp((safe if safe is not None else low) - (unsafe if unsafe is not None else low)))
        else:
            score = math.exp(unsafe) if unsafe is not None else 0.0  # below the top k: negligible
        if score < threshold or not decodes:
            return score, None
        if (choice.logprobs.tokens or [""])[0] in self.keys["unsafe"]:
            return score, choice.text  # "unsafe" and the category line after it
        # A threshold under 0.5 can flag what greedy decoding calls safe: ask for the line after "unsafe".
        rest = await self._complete([*ids, safety.unsafe_id], safety.settings.category_tokens, None)
        return score, rest.text


def _family(settings: LlamaGuardSettings, tokenizer: Any) -> Family:
    if settings.family != "auto":
        return FAMILIES[settings.family]
    vocab = tokenizer.get_vocab()
    for family in FAMILIES.values():
        if family.marker in vocab:
            return family
    raise NotASafetyModel(
        f"llama_guard: {settings.model!r} has none of the special tokens of Llama Guard 3 ({FAMILIES['llama_guard_3'].marker}), "
        f"Llama Guard 4 ({FAMILIES['llama_guard_4'].marker}) or ShieldGemma ({FAMILIES['shieldgemma'].marker}); "
        "set llama_guard.family if it is one of them"
    )


def engine_key(settings: LlamaGuardSettings) -> tuple:
    """What makes two configs' safety model one engine: every setting but the rail's policy."""
    return (settings.model_dump_json(exclude={"enabled", "timeout_s", "on_failure"}),)
