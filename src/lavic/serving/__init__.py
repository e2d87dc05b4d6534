"""The recommendation service: retrieval (sentence-transformers + FAISS), the recommender
(the tuned model loaded once, micro-batched), the ``index`` / ``recommend`` / ``serve``
commands and the web page.

Submodules import their heavy dependencies (torch, FAISS, FastAPI) themselves; importing this
package is cheap.
"""
