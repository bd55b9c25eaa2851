"""(docstring, function) pairs from source code in CodeSearchNet's recipe and jsonl schema.

``docstrings`` cleans doc comments and applies CSN's filters, ``python_ast`` and ``treesitter``
extract functions, ``languages`` names the six languages' extractors and pinned sources, and
``build`` runs extraction, dedup, the repository-level split and leakage removal.
"""
