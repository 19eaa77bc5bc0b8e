"""The Step 3.5 chat format: the template (:mod:`.template`), the tool-call and reasoning syntax
(:mod:`.toolcalls`), and OpenAI-style chat responses (:mod:`.openai`)."""
