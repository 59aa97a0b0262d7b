"""A fine-tuning run folder made without training, for the tests of the commands that read one."""
from vmae2.training import rundir


def finetune_run_folder(folder, **extra):
    """A fine-tuning run folder as python -m vmae2.finetune leaves it (config.json, weights, lists)."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "test.csv").write_text("a.mp4 0\n")
    (folder / "classes.txt").write_text("blue\nred\nnone\n")
    config = {"model": "vit_tiny_patch16_224", "nb_classes": 3, "num_frames": 8, "input_size": 64,
              "sampling_rate": 2, "tubelet_size": 2, "short_side_size": 64, "sparse_sample": False,
              "test_num_segment": 2, "test_num_crop": 2, "class_names": str(folder / "classes.txt"),
              "test_data_path": str(folder / "test.csv"), "data_root": "", **extra}
    rundir.write(config, "finetune", folder)
    return folder
