"""Importers that turn a policy trained elsewhere into a vla-edge bundle (schema 2).

The command-line side lives here and never imports torch: ``vla-edge import lerobot`` runs the export in the
LeRobot environment (``scripts/setup-lerobot.sh``), where ``models.lerobot`` does the torch work.
"""
