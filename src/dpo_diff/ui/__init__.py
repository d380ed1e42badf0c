"""The local web app (``dpo-diff ui``).

:mod:`.jobs` (queue, one worker per device, cancel, progress snapshots), :mod:`.folders` (run-folder browsing with
path safety) and :mod:`.space_text` (the editable search space) know nothing of the UI library; :mod:`.app` lays them
out with Gradio, which only ``dpo-diff ui`` imports.
"""
