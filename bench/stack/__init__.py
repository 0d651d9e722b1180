"""Stacked execution: many small configurations trained as one vectorised model.

``group`` decides which configurations may share a stack, ``train`` trains one,
``optim`` holds SGD and AdamW for stacked parameters, ``trial`` turns a stack into one
trial row and steps table per member, ``worker`` runs a stack in a sweep's worker.
"""
