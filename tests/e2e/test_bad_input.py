"""Bad input from the command line and the environment: one line, exit status 2, before any image is read;
and a run that says nothing the user cannot act on and never leaks a W&B key."""

import pytest

from tests.conftest import HYMENOPTERA

pytestmark = pytest.mark.slow

# A real folder dataset whose train split holds a placeholder GIF: reading the images would log it.
FOLDER = ["dataset=imagefolder", f"dataset.root={HYMENOPTERA}", "debug=tiny"]


@pytest.mark.parametrize(("override", "message"), [
    ("method.K=abc", "error: method.K=abc must be an integer"),
    ("stages.finetune.lr=-0.1", "error: stages.finetune.lr=-0.1 must be > 0"),
    ("method.KK=3", "error: config: Could not override 'method.KK'. To append to your config use +method.KK=3"),
    ("trainer=gpu", "error: trainer.accelerator=gpu but this machine has no usable GPU"),
])
def test_a_bad_setting_is_one_line_and_exit_2_before_any_image_is_read(train, override, message):
    run = train([*FOLDER, override])
    assert run.returncode == 2, run.output[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(message)
    assert "imageNotFound.gif" not in run.output and "Traceback" not in run.output


def test_an_output_directory_that_cannot_be_created_is_one_line(train, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run = train(["debug=tiny", f"paths.log_dir={blocker}/outputs"])
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot create the run directory (Not a directory: {blocker}/outputs/demo/run-")
    assert line.endswith("): set paths.log_dir to a writable folder")


def test_wandb_follows_its_environment_and_never_writes_the_key(train, tmp_path):
    key = "s3ltestkey" + "0123456789" * 3  # the shape of a W&B API key; never sent anywhere (offline)
    run = train(["stage=pretrain", "debug=tiny", "dataset.num_workers=0", "logger=wandb"],
                env={"WANDB_API_KEY": key, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert run.returncode == 0, run.output[-3000:]
    assert list((tmp_path / "outputs").rglob("offline-run-*"))  # WANDB_MODE won over the key: offline
    assert key not in run.output
    for path in (tmp_path / "outputs").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
