"""policydistill: specialists in simulation -> distilled, deployable students -> evaluation."""

__version__ = "0.1.0"
