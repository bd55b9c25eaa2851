"""Text pairs: neighbouring chunks (cpt-text's objective) and (query, document) search pairs.

``readers`` turns each offline source (reST, man pages, JSON speeches and chapters, a Wikipedia
XML dump, plain text folders) into :class:`~pairdata.text.readers.Document` objects with sections;
``build`` chunks, pairs, filters, dedups, splits and de-leaks them.
"""
