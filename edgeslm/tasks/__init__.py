"""Task accuracy (``eval --task``): what a model gets right, not only how far it drifts.

``core`` runs a task's problems through the batching runner and keeps results by content
(``evaluate.task_results``, beside the KLD results);
``humaneval`` holds HumanEval's data and the model authors' protocol; ``tool_calls`` the kept
tool-call suite and its scoring; ``sandbox`` (with ``launch``) runs model-written code where it can
harm nothing.
"""
