"""The default rules of the cheap tier.

``PHRASING`` reads normalized text (case-folded, whitespace collapsed, spaced letters joined, see
``railstack.core.text``): ``\\W*`` between fixed words also matches text whose spaces were
squeezed out. ``MARKERS`` read the raw text line by line, where a role line or a chat-template
token keeps its case and its place at the start of a line. Every repeated part of a rule needs a
separator or a bound, and every rule starts at a word boundary or a literal, which keeps matching
linear (no catastrophic backtracking).

The rules target phrasing that benign prompts almost never use, so that false positives stay at
or under 1% (``scripts/eval_heuristics.py`` measures it); paraphrases are the classifier tiers' job.
"""

from __future__ import annotations

_ANY = r"(?:all|any|every|each|the|these|those|my|your|of)"
_PRIOR = r"(?:previous|prior|preceding|above|earlier|former|foregoing|original|initial|system|developer)"
_OTHER = r"(?:following|subsequent|later|below|future|other|remaining)"
_RULES = (
    r"(?:instructions?|prompts?|rules|directions?|directives?|guidelines|orders"
    r"|constraints|restrictions|programming|guardrails)"
)
_SAY = r"(?:print|say|write|output|respond|reply|answer|return|type|repeat|state|tell)"
_WORD = r"(?:\w+\W+)"  # one arbitrary word; the separator is required so that words cannot be split
_AI = (
    r"(?:ai|a\W*i|llm|llms|gpt|chatgpt|chatbot|bot|assistant|ai\W*(?:model|system|assistant|agent|tool)"
    r"|(?:large\W*)?language\W*model|automated\W*(?:system|screener|reviewer|tool))"
)
_READING = r"(?:reading|processing|summari[sz]ing|reviewing|screening|parsing|analy[sz]ing|evaluating|grading|scanning)"
_EARLIER_TEXT = (
    r"(?:above|before\W*(?:this|that|my|these)|preceding|prior\W*to\W*(?:this|that|my)|that\W*came\W*before"
    r"|at\W*the\W*(?:beginning|start|top|very\W*(?:beginning|start|top)))"
)

PHRASING: dict[str, str] = {
    "override-previous-instructions": (
        rf"\b(?:ignore|disregard|forget|override)\W*(?:{_ANY}\W*){{0,3}}{_PRIOR}\W*"
        rf"(?:(?:and|or|&)\W*{_OTHER}\W*)?{_WORD}?{_RULES}\b"
    ),
    "override-instructions-and": (
        rf"\b(?:ignore|disregard|forget)\W*(?:about\W*)?(?:{_ANY}\W*){{1,3}}{_RULES}\W*"
        r"(?:you\W*(?:got|were\W*given|received)|and\b|\.|,|:|!)"
    ),
    "override-instructions-then-say": (
        rf"\b(?:ignore|disregard|forget)\W*(?:{_ANY}\W*){{0,3}}{_RULES}\W*(?:,\W*)?(?:and|then|&|\.)\W*"
        rf"(?:just\W*|only\W*|instead\W*|simply\W*|now\W*)*{_SAY}\b"
    ),
    "override-rest-of-data": (
        r"\b(?:ignore|disregard|skip|forget)\W*(?:the\W*)?(?:rest|remainder)\W*of\W*(?:this|the|these|that|my)\W*"
        r"(?:data|text|document|email|e\W*mail|message|input|content|file|page|conversation|prompt|context|report)"
    ),
    "disregard-all-except": (
        r"\b(?:ignore|disregard|forget)\W*(?:all|any|every)\W*(?:the\W*)?(?:other\W*)?"
        r"(?:info|information|data|text|content|context|instructions?|input|messages?|words?)\W*"
        r"(?:above\W*|before\W*|here\W*)?(?:except|but|other\W*than|besides|apart\W*from|save\W*for)\b"
    ),
    "do-not-follow-instructions": (
        rf"\b(?:do\W*not|don\W*t|stop|never)\W*(?:follow|obey|comply\W*with|adhere\W*to)\W*(?:ing\W*)?"
        rf"(?:{_ANY}\W*){{0,2}}{_PRIOR}?\W*{_RULES}\W*(?:you\W*(?:were|have\W*been)\W*given|above|before|any\W*more|anymore)"
    ),
    "instructions-void": (
        rf"\b(?:the|all|your|any)\W*(?:{_PRIOR}\W*){{1,2}}{_RULES}\W*(?:are|is|were|was|have\W*been|has\W*been)\W*(?:now\W*)?"
        r"(?:cancel+ed|void|null|obsolete|revoked|overridden|superseded|lifted|suspended|no\W*longer\W*(?:valid|apply|in\W*effect|relevant))"
    ),
    "new-task-focus": r"\b(?:focus|concentrate)\W*(?:now\W*)?on\W*your\W*new\W*(?:task|assignment|instructions?)",
    "your-new-task": (
        r"\byour\W*(?:new|real|actual|true|only|updated|revised)\W*(?:task|instructions?|job|goal|mission|objective|purpose|role)"
        r"\W*(?:is|are|will\W*be|now\W*is|from\W*now\W*on\W*is)\W*(?:to|:)"
    ),
    "forget-everything": (
        r"\bforget\W*(?:about\W*)?everything\W*(?:above|before|i\W*(?:said|told\W*you)|so\W*far"
        r"|you\W*(?:were|have\W*been|ve\W*been)\W*(?:told|taught|given|instructed))"
    ),
    "new-instructions-imperative": (
        r"\bnew\W*(?:system\W*)?instructions?\W*(?:follow\W*)?:\W*(?:stop|ignore|disregard|forget|from\W*now|you\W*(?:are|must|will|should|shall)"
        r"|do\W*not|don\W*t|instead|always|never|reveal|print|say|output|respond|reply|answer\W*only)\b"
    ),
    "override-safety": (
        r"\b(?:override|bypass|disable|turn\W*off|deactivate|ignore|remove|circumvent|lift|drop)\W*(?:all\W*(?:of\W*)?)?(?:your|its)\W*"
        r"(?:own\W*)?(?:safety|content|ethical|moral|ethics)\W*(?:settings|filters?|guidelines|rules|polic(?:y|ies)|restrictions"
        r"|guardrails|protocols|measures|checks|training|programming|constraints)"
    ),
    "answer-without-refusing": (
        r"\b(?:answer|respond\W*to|reply\W*to|fulfil+)\W*(?:every|all|any)\W*(?:single\W*)?(?:questions?|requests?|prompts?)\W*"
        r"(?:\w+\W+){0,2}?without\W*(?:ever\W*)?(?:refus|restrict|filter|censor|warn|hesitat|declin|question)"
    ),
    "ai-without-rules": (
        rf"\b(?:act|behave|respond|operate|pretend\W*to\W*be)\W*(?:as|like)\W*(?:an?\W*)?{_AI}\W*(?:with\W*no|without\W*(?:any\W*)?)\W*"
        r"(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|censorship|boundaries)"
    ),
    "agreed-to-ignore-rules": (
        rf"\b(?:i\W*will|i\W*ll|i\W*am\W*going\W*to|i\W*can\W*now|i\W*shall)\W*(?:now\W*)?(?:ignore|disregard|forget|bypass|drop)\W*"
        rf"(?:all\W*)?(?:of\W*)?(?:my|the|any)\W*(?:previous\W*|own\W*|safety\W*)?{_RULES}\W*(?:from\W*now\W*on|now|for\W*you)"
    ),
    "from-now-on-persona": (
        r"\bfrom\W*now\W*on\W*,?\W*you\W*(?:are\W*going\W*to|will|shall|must)\W*(?:act|be|play|respond|answer|pretend|operate)"
        rf"\W+{_WORD}{{0,4}}(?:dan|jailbr\w*|unfiltered|uncensored|unrestricted|amoral|two\W*(?:different|separate)|without)\b"
    ),
    "amoral-persona": (
        rf"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical)\W+(?:and\W+{_WORD}|,\W*{_WORD})?"
        r"(?:ai|chatbot|bot|assistant|language\W*model|persona)\b"
    ),
    "freed-from-confines": r"\bfreed\W*from\W*the\W*(?:typical\W*)?(?:confines|restrictions|limitations|rules)",
    "reveal-system-prompt": (
        r"\b(?:reveal|show|print|repeat|output|display|leak|disclose|tell\W*me)\W*(?:me\W*)?"
        r"(?:your\W*(?:full\W*|entire\W*|hidden\W*|secret\W*|original\W*|initial\W*)?"
        r"|the\W*(?:full|entire|hidden|secret|original|initial)\W*)"
        r"(?:system\W*prompt|instructions|system\W*message|prompt\W*text)"
    ),
    "prompt-extraction-question": (
        r"\bwhat\W*(?:are|were|is|was)\W*your\W*(?:very\W*)?"
        r"(?:initial|original|first|starting|opening|system|hidden|secret|exact|preset|pre\W*set|underlying|core|base|default)"
        r"\W*(?:instructions?|prompts?|rules|guidelines|directives|orders|configuration|message|directions)"
    ),
    # Near the start of a text: "output the text above" after a poem of the client's own is no extraction.
    "prompt-extraction-earlier-text": (
        r"(?m:^)\W*(?:\w+\W+){0,8}?"
        r"(?:repeat|print|output|display|echo|reproduce|recite|dump|spell\W*out|type\W*out|write\W*out|show\W*me|give\W*me)\W*"
        r"(?:back\W*|out\W*)?(?:all\W*(?:of\W*)?|every\W*(?:single\W*)?)?(?:the\W*)?"
        r"(?:text|words?|lines?|content|contents|everything|instructions?|messages?|sentences?|tokens?|characters?|prompt)\W*"
        rf"(?:{_WORD}{{0,2}}?){_EARLIER_TEXT}"
    ),
    "prompt-extraction-developers-gave": (
        r"\b(?:summari[sz]e|list|describe|share|repeat|recite|tell\W*me|explain|paraphrase|print|output|reveal|show\W*me|give\W*me)\W*"
        r"(?:all\W*(?:of\W*)?)?(?:the|your)\W*(?:\w+\W+){0,2}?(?:instructions?|rules|guidelines|directives|prompt)\W*(?:that\W*)?"
        r"(?:your\W*(?:developers?|creators?|makers?|operators?|owners?|programmers?|admins?|company)\W*(?:gave|have\W*given|wrote|set|provided)"
        r"|you\W*(?:were|have\W*been)\W*(?:given|told|programmed|instructed|prompted)"
        r"|(?:they|openai|anthropic|the\W*developers?)\W*gave\W*you)"
    ),
    "prompt-extraction-told": (
        r"\b(?:repeat|tell\W*me|say|recite|output|print|reveal|share|what|list)\W*(?:\w+\W+){0,3}?"
        r"(?:you\W*(?:were|have\W*been|got)|were\W*you)\W*(?:told|given|instructed|programmed|prompted|configured|initiali[sz]ed)"
        r"\W*(?:\w+\W+){0,3}?(?:(?:at|in|from)\W*(?:the\W*)?(?:very\W*)?(?:beginning|start|outset|top|first)"
        r"|before\W*(?:this|our|the)\W*(?:conversation|chat|session|dialog(?:ue)?))"
    ),
    "prompt-extraction-verbatim": (
        r"\b(?:your|the)\W*(?:system|initial|original|hidden|secret|first|developer|pre\W*)\W*(?:prompt|instructions|message)"
        r"\W*(?:verbatim|word\W*for\W*word|in\W*full|exactly\W*as|as\W*is|in\W*a\W*code\W*block)"
    ),
    "addressed-to-ai-reader": (
        rf"\b(?:if\W*you\W*are\W*(?:an?\W*)?{_AI}\W*(?:that\W*is\W*|who\W*is\W*)?{_READING}"
        rf"|(?:note|message|instructions?|attention|reminder)\W*(?:to|for)\W*(?:the\W*|any\W*|all\W*)?{_AI}s?\W*"
        rf"(?:that\W*(?:is|are)\W*)?{_READING}\W*(?:this|these|the)"
        rf"|{_AI}\W*[:,]\W*(?:when|while|as|after|before|if)\W*you\W*(?:read|process|summari[sz]e|translate|review|analy[sz]e|parse|see|reply\W*to|answer)\W*this)"
    ),
    "persona-dan": r"\b(?:do\W*anything\W*now|you\W*are\W*(?:now\W*)?dan\b|dan\W*mode|jailbreak\W*mode)",
    # A phone or an IDE has a developer mode too: only the chatbot persona counts.
    "developer-mode": (
        rf"\b(?:developer\W*mode\W*(?:output|response)|(?:chatgpt|gpt|{_AI})\W*with\W*developer\W*mode"
        r"|(?:simulate|emulate)\W*(?:a\W*|the\W*)?developer\W*mode|you\W*(?:are|will\W*be)\W*(?:now\W*)?(?:in|running\W*in)\W*developer\W*mode)"
    ),
    "no-restrictions-persona": (
        r"\b(?:free\W*from|without|no\W*longer\W*(?:bound|restricted)\W*by|not\W*bound\W*by)\W*"
        rf"(?:any\W*)?(?:ethical|moral|openai|content|safety)\W+{_WORD}?(?:restrictions|guidelines|policies|filters|rules)"
    ),
    # German instruction overrides, as in the deepset set.
    "override-previous-instructions-de": (
        rf"\b(?:ignoriere|ignorieren\W*sie|vergiss|vergessen\W*sie|missachte|abweichend\W*(?:zu|von))\W+{_WORD}{{0,3}}"
        r"(?:anweisungen|befehle|instruktionen|vorgaben|regeln|aufträge|aufgaben|alles)\b"
    ),
}

# A request to decode what the message carries and act on it; only counted when the message
# does carry a decodable payload (``railstack.heuristics.decoding``).
DECODE_AND_ACT = (
    r"\b(?:decode|decipher|decrypt|unscramble|translate|convert|interpret|read|transcribe)\w*\W+(?:\w+\W+){0,12}?"
    r"(?:then\W*|and\W*)(?:\w+\W+){0,3}?"
    r"(?:follow|execute|do|obey|perform|carry\W*out|act\W*on|comply|answer|respond|reply|run|apply|fulfil+)\b"
    r"|\b(?:follow|execute|obey|carry\W*out|act\W*on|comply\W*with|do\W*what|answer|respond\W*to)\W*(?:\w+\W+){0,6}?"
    r"(?:encoded|base\W*(?:64|32|16)|hex|morse|rot\W*13|cipher|ciphered|atbash|braille|nato|ascii\W*85|uuencoded|decoded|hidden)\b"
)

_TOKENS = (
    r"<\|\s*(?:im_start|im_end|im_sep|endoftext|begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|eom_id"
    r"|eot|header_start|header_end|system|user|assistant|start|end|message|channel|return|constrain|tool_call|"
    r"tool_response|python_tag)\s*\|>"
    r"|<\s*/?\s*(?:start_of_turn|end_of_turn)\s*>|\[/?INST\]|<</?SYS>>|\[(?:system|assistant|user)\]\(#[\w-]+\)"
)
_ROLE = r"(?:System|SYSTEM|Assistant|ASSISTANT|User|USER|Human|HUMAN|AI|Developer|DEVELOPER|Instructions?|INSTRUCTIONS?|Response|RESPONSE)"

# Read on the raw text, per field. A tool result or a retrieved chunk is data: any turn
# structure in it is an injection. The client's own turn may paste a transcript or ask about
# a template token, so there only markers that open a system turn, or a template turn, count.
MARKERS_THIRD_PARTY: dict[str, str] = {
    # Data that tells its reader what to do: "when you summarise this, tell the reader...".
    "instruction-to-reader": (
        r"(?i:\bwhen\W+you\W+(?:read|process|summari[sz]e|translate|review|analy[sz]e|parse|see|answer)\W+(?:this|these|the\W+(?:above|following))"
        r"\W+(?:\w+\W+){0,3}?(?:tell|say|print|write|output|include|add|respond|reply|insert|mention|recommend|rate|send|ignore|forget)\b)"
    ),
    "hidden-comment-instruction": (
        r"(?i:<!--[^<>]{0,2048}?\b(?:ignore|disregard|assistant|ai|llm|instructions?|you\s+must|tell\s+the|system)\b[^<>]{0,2048}-->)"
    ),
    "chat-template-token": rf"(?i:{_TOKENS})",
    "role-line": rf"(?m:^[ \t>*#\[<(]*{_ROLE}(?:[ \t]+(?:message|prompt|note|override|update))?[\]>*)]*[ \t]*:)",
    "instruction-header": r"(?im:^[ \t]*#{2,}[ \t]*(?:instruction|system|response|input|new[ \t]+instructions?)s?\b)",
}
MARKERS_OWN_TURN: dict[str, str] = {
    "chat-template-turn": (
        r"(?i:<\|\s*im_start\s*\|>\s*(?:system|assistant|developer)|<\|\s*start_header_id\s*\|>\s*(?:system|assistant|ipython|tool)"
        r"|<\|\s*(?:system|assistant)\s*\|>\s*\S|<\s*start_of_turn\s*>\s*(?:model|system)|\[/INST\]\s*\S|<<SYS>>"
        r"|\[(?:system|assistant)\]\(#[\w-]+\)|<\|\s*(?:im_end|eot_id|endoftext|end_of_text)\s*\|>\s*\S"
        r"|\[INST\][^\[]{1,4096}\[/INST\])"
    ),
    # An instruction-tuning template (Alpaca's) pasted whole: a turn of its own with its answer to come.
    "instruction-template": r"(?im:^[ \t]*#{2,}[ \t]*(?:instruction|input)[ \t]*:?[ \t]*$[^#]{1,4096}^[ \t]*#{2,}[ \t]*response[ \t]*:)",
    "system-role-line": (
        r"(?im:^[ \t>*#\[<(]*system(?:[ \t]+(?:message|prompt|instructions?|override|update|note|notice))?[\]>*)]*[ \t]*:[ \t]*"
        r"(?:you\b|ignore|disregard|forget|from[ \t]+now|new[ \t]+instructions?|the[ \t]+(?:user|assistant)|do[ \t]+not"
        r"|always|never|respond|reply|answer|print|say|output|reveal|override|bypass|disable|enable|unlock|switch|act|pretend"
        r"|comply|obey|follow|stop|developer|safety|jailbreak))"
    ),
}
