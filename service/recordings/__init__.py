"""Recordings with several voices: who speaks when, and which of them are enrolled.

``segmentation`` (speech regions → analysis windows), ``clustering`` (window embeddings →
speakers), ``timeline`` (window labels → segments) and ``identify`` (the whole path, matching each
speaker with the find-match decision code of ``service.search``).
"""
