"""Distillation: who acts (schedules), what is matched (losses) and the algorithms that use them."""
