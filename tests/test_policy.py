import numpy as np
import pytest
import torch
from gymnasium import spaces

from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.policy import CallablePolicy, ModulePolicy, Policy, RandomPolicy, Teacher
from policydistill.types import check_groups, select_groups

BOX = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
OBS = {"policy": np.arange(8, dtype=np.float32).reshape(2, 4), "privileged": np.ones((2, 2), np.float32)}


def test_protocol_membership():
    for p in (CallablePolicy(lambda x: x[:2]), ModulePolicy(torch.nn.Linear(4, 2)), RandomPolicy(BOX)):
        assert isinstance(p, Policy)
    assert isinstance(CallablePolicy(lambda x: x[:2]), Teacher)
    assert not isinstance(RandomPolicy(BOX), Teacher)


def test_callable_policy_batched_and_unbatched_agree():
    one = CallablePolicy(lambda x: x[:2] * 10, action_space=BOX)
    many = CallablePolicy(lambda x: x[:, :2] * 10, action_space=BOX, batched=True)
    np.testing.assert_array_equal(one.act(OBS), many.act(OBS))
    assert one.act(OBS).max() == 1.0 and one.label(OBS).std is None


def test_module_policy_is_frozen_and_reads_its_groups():
    module = torch.nn.Linear(6, 2)
    p = ModulePolicy(module, groups=("policy", "privileged"))
    expected = module(torch.cat([torch.as_tensor(OBS["policy"]), torch.ones(2, 2)], 1)).detach().numpy()
    np.testing.assert_allclose(p.act(OBS), expected, atol=1e-6)
    assert not any(q.requires_grad for q in module.parameters()) and not module.training


def test_group_validation():
    with pytest.raises(ValueError, match="invalid observation groups"):
        check_groups(["policy", "secret"])
    with pytest.raises(KeyError, match="lacks groups \\['task'\\]"):
        select_groups(OBS, ["task"])


def test_scripted_teacher_solves_its_task_only(default_suite, seeker):
    """The goal is only in the privileged group: hide it and the same controller fails."""
    assert summarise(run_episodes(default_suite, "west", seeker, episodes=4))["success_rate"] == 1.0
    blind = CallablePolicy(lambda x: seeker.fn(np.concatenate([x, np.zeros((len(x), 2), np.float32)], 1)),
                           groups=("policy",), batched=True)
    assert summarise(run_episodes(default_suite, "west", blind, episodes=4))["success_rate"] == 0.0
