"""Scale-out: the same configs on Ray (expert tasks, DAgger rollout actors) and under torchrun (DDP
student training). Ray is an optional extra, imported only when asked for."""
