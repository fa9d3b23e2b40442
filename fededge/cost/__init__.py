"""What training costs: exact MAC counts, the ledger, device profiles and their calibration."""
