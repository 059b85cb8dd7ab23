from django.contrib import admin

from regions.models import Datacenter, Region


class DatacenterInline(admin.TabularInline):
    model = Datacenter
    extra = 0
    fields = ["code", "number", "is_default"]
    readonly_fields = ["code", "number"]


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "rest_url", "mqtt_url", "is_default"]
    readonly_fields = ["code"]
    inlines = [DatacenterInline]


@admin.register(Datacenter)
class DatacenterAdmin(admin.ModelAdmin):
    list_display = ["code", "region", "number", "is_default"]
    list_filter = ["region"]
    readonly_fields = ["code", "region", "number"]
