from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    value = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "testapp"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name
