"""The training scaffold shared by pretraining and fine-tuning: the loop (:mod:`vmae2.training.loop`), the
distributed runtime, checkpoints of the training state, the run folder, the memory of one step. Importing this
package imports no torch (the run folder is read by light commands)."""
