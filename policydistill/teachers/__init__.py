"""Teachers: SB3 experts, callables, bundles, and the bank that routes envs to their task's teacher."""

from policydistill.teachers.bank import TeacherBank
from policydistill.teachers.load import load_policy, policies_for_suite
from policydistill.teachers.sb3 import import_sb3_zip, policy_from_sb3

__all__ = ["TeacherBank", "import_sb3_zip", "load_policy", "policies_for_suite", "policy_from_sb3"]
