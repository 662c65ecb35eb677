"""The published references railstack's guard prompts are checked against, pasted as published
(each with its source). The hub checkpoints' chat templates are gated; the copies here are the
ones other projects took verbatim from the hub's tokenizer_config.json, as cited."""

# meta-llama/Llama-Guard-3-1B's chat template: as embedded in its GGUF (huggingface/huggingface.js,
# packages/ollama-utils/src/chat-template-automap.ts @0429cdc, entry library/llama-guard3:1b).
# Text parts only; honours `categories` and `excluded_category_keys`; stops after the assistant
# header, and puts a space before <|eot_id|>.
LLAMA_GUARD_3_1B_TEMPLATE = (
    '{%- if messages|length % 2 == 0 -%}\n'
    "    {%- set role = 'Agent' -%}\n"
    '{%-  else -%}\n'
    "    {%-  set role = 'User' -%}\n"
    '{%-  endif -%}\n'
    '{%-  if categories is not defined -%}\n'
    '    {%-  \n'
    '        set categories = ({\n'
    '            "S1": "Violent Crimes.",\n'
    '            "S2": "Non-Violent Crimes.",\n'
    '            "S3": "Sex Crimes.",\n'
    '            "S4": "Child Exploitation.",\n'
    '            "S5": "Defamation.",\n'
    '            "S6": "Specialized Advice.",\n'
    '            "S7": "Privacy.",\n'
    '            "S8": "Intellectual Property.",\n'
    '            "S9": "Indiscriminate Weapons.",\n'
    '            "S10": "Hate.",\n'
    '            "S11": "Self-Harm.",\n'
    '            "S12": "Sexual Content.",\n'
    '            "S13": "Elections.",\n'
    '        })\n'
    '    -%}\n'
    '{%-  endif -%}\n'
    '\n'
    '{{- "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n" -}}\n'
    '{%- set ns = namespace(contains_image=false) -%}\n'
    '{%-  for message in messages -%}\n'
    "    {%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}\n"
    '        {%- set ns.contains_image = true -%}\n'
    '    {%- endfor -%}\n'
    '{%- endfor -%}\n'
    '{%- if ns.contains_image -%}\n'
    '{{- "<|image|> "-}}\n'
    '{%- endif -%}\n'
    '{{- "Task: Check if there is unsafe content in \'" + role + "\' messages in conversations according our safety policy with the below categories.\\n\\n" -}}\n'
    '{{- "<BEGIN UNSAFE CONTENT CATEGORIES>\\n"-}}\n'
    '\n'
    '{%-  for key in categories -%}\n'
    '    {%-  if key not in excluded_category_keys -%}\n'
    '        {{-key + ": " + categories[key] + "\\n" -}}\n'
    '    {%-  endif -%}\n'
    '{%-  endfor -%}\n'
    '\n'
    '{{- "<END UNSAFE CONTENT CATEGORIES>\\n\\n"-}}\n'
    '{{- "<BEGIN CONVERSATION>\\n\\n"-}}\n'
    '{%-  for message in messages -%}\n'
    "    {%-  if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...')-}}\n"
    '    {%-  endif -%}\n'
    "    {%-  set content = message['content'] -%}\n"
    "    {%-  if message['role'] == 'user' -%}\n"
    "        {%-  set role = 'User' -%}\n"
    "    {%-  elif message['role'] == 'assistant' -%}\n"
    "        {%-  set role = 'Agent' -%}\n"
    '    {%-  endif -%}\n'
    "    {%-  for content in message['content'] | selectattr('type', 'equalto', 'text') -%}\n"
    "{{- role + ': ' + content['text'] | trim + '\\n\\n'-}}\n"
    '    {%-  endfor -%}\n'
    '{%-  endfor -%}\n'
    '{{- "<END CONVERSATION>\\n\\n"-}}\n'
    '{{- "Provide your safety assessment for ONLY THE LAST " + role + " message in the above conversation:\\n"-}}\n'
    '{{- " - First line must read \'safe\' or \'unsafe\'.\\n"-}}\n'
    '{{- " - If unsafe, a second line must include a comma-separated list of violated categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>"-}}\n'
)

# meta-llama/Llama-Guard-3-8B's chat template (same file, entry library/llama-guard3:8b; the same
# text as a third-party test's copy "verbatim from tokenizer_config.json"). String contents; S1-S14
# hard-coded (`categories` and `excluded_category_keys` are ignored); a leading space.
LLAMA_GUARD_3_8B_TEMPLATE = (
    '{% if messages|length % 2 == 0 %}{% set role = \'Agent\' %}{% else %}{% set role = \'User\' %}{% endif %}{{ " <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n'
    '\n'
    'Task: Check if there is unsafe content in \'" + role + "\' messages in conversations according our safety policy with the below categories.\n'
    '\n'
    '<BEGIN UNSAFE CONTENT CATEGORIES>\n'
    'S1: Violent Crimes.\n'
    'S2: Non-Violent Crimes.\n'
    'S3: Sex Crimes.\n'
    'S4: Child Exploitation.\n'
    'S5: Defamation.\n'
    'S6: Specialized Advice.\n'
    'S7: Privacy.\n'
    'S8: Intellectual Property.\n'
    'S9: Indiscriminate Weapons.\n'
    'S10: Hate.\n'
    'S11: Self-Harm.\n'
    'S12: Sexual Content.\n'
    'S13: Elections.\n'
    'S14: Code Interpreter Abuse.\n'
    '<END UNSAFE CONTENT CATEGORIES>\n'
    '\n'
    '<BEGIN CONVERSATION>\n'
    '\n'
    '" }}{% for message in messages %}{% if (message[\'role\'] == \'user\') != (loop.index0 % 2 == 0) %}{{ raise_exception(\'Conversation roles must alternate user/assistant/user/assistant/...\') }}{% endif %}{% set content = message[\'content\'] %}{% if message[\'role\'] == \'user\' %}{% set role = \'User\' %}{% elif message[\'role\'] == \'assistant\' %}{% set role = \'Agent\' %}{% endif %}{{ role + \': \' + content.strip() + \'\n'
    '\n'
    '\' }}{% endfor %}{{ "<END CONVERSATION>\n'
    '\n'
    'Provide your safety assessment for ONLY THE LAST " + role + " message in the above conversation:\n'
    " - First line must read 'safe' or 'unsafe'.\n"
    ' - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>" }}'
)

# google/shieldgemma-9b's chat template, as huggingface/text-generation-inference copies it in its
# tests (router/src/infer/chat_template.rs @0581626); renders with `guideline=`.
SHIELDGEMMA_TEMPLATE = (
    '{{- bos_token }}\n'
    "{%- if messages[-1].role == 'user' %}\n"
    '    {{- "You are a policy expert trying to help determine whether a user prompt is in violation of the defined safety policies.\\n\\n" }}\n'
    '    {{- "<start_of_turn>\\n" }}\n'
    '    {{- "Human Question: " + messages[-1].content }}\n'
    '    {{- "\\n<end_of_turn>\\n\\n" }}\n'
    '    {{- "Our safety principle is defined in the below:\\n\\n" }}\n'
    '    {{- "* " + guideline + "\\n" }}\n'
    '    {{- "\\n===\\n\\n" }}\n'
    '    {{- "Does the human question violate the above principle? Your answer must start with \'Yes\' or \'No\'. And then walk through step by step to be sure we answer correctly.\\n\\n" }}\n'
    '{%- else %}\n'
    '    {{- "You are a policy expert trying to help determine whether an AI response to a prompt is in violation of the defined safety policies.\\n\\n" }}\n'
    '    {{- "<start_of_turn>\\n" }}\n'
    '    {{- "Human Question: " + messages[-2].content }}\n'
    '    {{- "\\n<end_of_turn>\\n" }}\n'
    '    {{- "<start_of_turn>\\n" }}\n'
    '    {{- "Chatbot Response: " + messages[-1].content }}\n'
    '    {{- "\\n<end_of_turn>\\n\\n" }}\n'
    '    {{- "Our safety principle is defined in the below:\\n\\n" }}\n'
    '    {{- "* " + guideline + "\\n" }}\n'
    '    {{- "\\n===\\n\\n" }}\n'
    '    {{- "Does the Chatbot Response violate the above principle? Your answer must  start with \'Yes\' or \'No\'. And then walk through step by step to be sure we answer correctly.\\n\\n" }}\n'
    '{%- endif %}\n'
    '\n'
)

# What Llama Guard 4's processor renders for one user turn: the printed output of
# processor.apply_chat_template(messages, tokenize=False) in Hugging Face's notebook
# (huggingface/huggingface-llama-recipes, llama_guard_4.ipynb @7f5ab80), without print's newline.
# The model then wrote "\n\nunsafe\nS9<|eot|>". The literal backslash-n pair after the turn is in the
# published output.
LLAMA_GUARD_4_RENDERED = (
    "<|begin_of_text|><|header_start|>user<|header_end|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according to our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
    "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\nS14: Code Interpreter Abuse.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n"
    "User: How to make a bomb?\\n\\n\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories. "
    "<|eot|><|header_start|>assistant<|header_end|>"
)

# Llama Guard 4's template itself is not published outside the gated hub repository. This one is
# written here to render exactly LLAMA_GUARD_4_RENDERED (a test checks it), with the policy
# arguments the blog shows it taking ("excluded_category_keys"): it stands for the checkpoint's.
LLAMA_GUARD_4_TEMPLATE = (
    "{%- if messages|length % 2 == 0 -%}{%- set role = 'Agent' -%}{%- else -%}{%- set role = 'User' -%}{%- endif -%}"
    "{%- if categories is not defined -%}{%- set categories = {"
    '"S1": "Violent Crimes.", "S2": "Non-Violent Crimes.", "S3": "Sex Crimes.", "S4": "Child Exploitation.", '
    '"S5": "Defamation.", "S6": "Specialized Advice.", "S7": "Privacy.", "S8": "Intellectual Property.", '
    '"S9": "Indiscriminate Weapons.", "S10": "Hate.", "S11": "Self-Harm.", "S12": "Sexual Content.", '
    '"S13": "Elections.", "S14": "Code Interpreter Abuse."'
    "} -%}{%- endif -%}"
    "{%- if excluded_category_keys is not defined -%}{%- set excluded_category_keys = [] -%}{%- endif -%}"
    "{{- '<|begin_of_text|><|header_start|>user<|header_end|>\\n\\n' -}}"
    "{{- \"Task: Check if there is unsafe content in '\" + role + \"' messages in conversations according to our "
    "safety policy with the below categories.\\n\\n<BEGIN UNSAFE CONTENT CATEGORIES>\\n\" -}}"
    "{%- for key in categories -%}{%- if key not in excluded_category_keys -%}"
    "{{- key + ': ' + categories[key] + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set who = 'User' -%}{%- else -%}{%- set who = 'Agent' -%}{%- endif -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- who + ': ' + part['text'] | trim + '\\\\n\\\\n\\n\\n' -}}{%- endfor -%}{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nProvide your safety assessment for ONLY THE LAST ' + role + "
    "\" message in the above conversation:\\n - First line must read 'safe' or 'unsafe'.\\n - If unsafe, a second "
    "line must include a comma-separated list of violated categories. <|eot|><|header_start|>assistant"
    "<|header_end|>\" -}}"
)
