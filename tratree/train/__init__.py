"""Training: SFT and DPO with TRL and PEFT, their datasets, optimizer-step budgets and what each run reports."""
