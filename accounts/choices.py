from django.db import models


class AccessType(models.IntegerChoices):
    STANDARD = 0, "standard"
    MASTER = 1, "master"
