"""The code state recorded with every evaluation run."""

from evaluation.harness import environment


def test_a_given_commit_is_recorded_without_asking_git(monkeypatch):
    asked = []
    monkeypatch.setattr(environment, "_git", lambda *args: asked.append(args) or "stale")
    monkeypatch.setenv("SHAREDSPARSE_COMMIT", "5bfea0a")
    env = environment.environment()
    assert (env["commit"], env["dirty"], asked) == ("5bfea0a", [], [])


def test_without_a_given_commit_git_describes_the_tree(monkeypatch):
    answers = {"rev-parse": "abc123", "status": " M sharedsparse_jax/planner.py\n?? new.py"}
    monkeypatch.setattr(environment, "_git", lambda *args: answers[args[0]])
    monkeypatch.delenv("SHAREDSPARSE_COMMIT", raising=False)
    env = environment.environment()
    assert env["commit"] == "abc123"
    assert env["dirty"] == ["new.py", "sharedsparse_jax/planner.py"]
