"""Model families: the model a task runs, chosen with `model=<family>` (cmvl/conf/model/<family>.yaml)."""
