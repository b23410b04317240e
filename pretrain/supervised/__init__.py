"""Supervised recipes: DeiT III at cluster scale (``deit3``) and single-GPU CIFAR-scale recipes (``cifar``).

Modules: ``config`` (schema), ``augment`` (3-Augment, CIFAR pipelines), ``mixup`` (Mixup/CutMix + targets),
``losses`` (CE with label smoothing / DeiT III BCE), ``lamb`` (LAMB), ``ema`` (model EMA), ``samplers``
(repeated augmentation), ``optim`` (param groups, optimisers, schedules), ``engine`` (the shared loop).
"""
