"""Text in and out of models: prompt templates (`templates`, rendering `cai/prompts/`) and parsing of model
text (`parsing`: cleaning revisions, spotting defects, the first JSON object).

Pure functions over strings and messages. Must not import: engines, runs, label, or anything above; only
`cai.core`.
"""
