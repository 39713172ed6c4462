"""The regional workspace: the study list and study page, a person's timeline across
institutions, 互认 decisions, and the admin console. It reads every domain below it (the
index, consults, cloud film) and owns no imaging logic of its own."""
