"""Post-training: supervised fine-tuning on conversations (full or LoRA), classifier-free guidance, a task.

* :mod:`sumi.finetune.data` — records → chat template → SFT canvases (prompt clean, response noised);
* :mod:`sumi.finetune.lora` — LoRA adapters through ``peft`` (train, save in PEFT's format, merge);
* :mod:`sumi.finetune.run` — ``sumi finetune``: the pretraining :class:`~sumi.train.Trainer` on SFT batches;
* :mod:`sumi.finetune.tasks` — a synthetic instruction task with a train / held-out split.
"""
