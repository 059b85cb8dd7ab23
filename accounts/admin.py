from django import forms
from django.contrib import admin, messages

from accounts import services
from accounts.models import Account, Token
from flespi_site.errors import DomainError


class AccountAddForm(forms.ModelForm):
    """Region and datacenter are optional (the rules place the account) and checked by the rules
    here, so that a refusal is a form error rather than a crash in ``save_model``."""

    class Meta:
        model = Account
        fields = ["name", "parent", "region", "datacenter", "metadata"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["region"].required = False
        self.fields["datacenter"].required = False
        self.fields["region"].help_text = "only for a first-level subaccount; default: the parent's region"
        self.fields["datacenter"].help_text = "default: the region's default datacenter"

    def clean(self):
        cleaned = super().clean()
        region, datacenter = cleaned.get("region"), cleaned.get("datacenter")
        try:
            services.account_placement(
                parent=cleaned.get("parent"),
                region_code=region.code if region else None,
                datacenter_code=datacenter.code if datacenter else None,
            )
        except DomainError as exc:
            raise forms.ValidationError(exc.reason) from None
        return cleaned


class SubaccountInline(admin.TabularInline):
    model = Account
    fk_name = "parent"
    extra = 0
    fields = ["name", "region", "datacenter", "depth"]
    readonly_fields = ["name", "region", "datacenter", "depth"]
    show_change_link = True
    can_delete = False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["tree_name", "id", "region", "datacenter", "depth"]
    list_filter = ["region", "datacenter", "depth"]
    search_fields = ["name"]
    ordering = ["path"]
    inlines = [SubaccountInline]

    @admin.display(description="account")
    def tree_name(self, obj: Account) -> str:
        return "— " * obj.depth + obj.name

    def get_readonly_fields(self, request, obj=None):
        # The region and the datacenter are chosen once, by the creation rules.
        if obj is None:
            return ["depth", "path"]
        return ["parent", "region", "datacenter", "depth", "path"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = AccountAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "parent", "region", "datacenter", "metadata"]
        return ["name", "parent", "region", "datacenter", "depth", "path", "metadata"]

    def save_model(self, request, obj, form, change):
        if change:
            services.account_update(account=obj, data={"name": obj.name, "metadata": obj.metadata})
            return
        created = services.account_create(
            name=obj.name,
            parent=obj.parent,
            region_code=obj.region.code if obj.region_id else None,
            datacenter_code=obj.datacenter.code if obj.datacenter_id else None,
            metadata=obj.metadata,
        )
        obj.pk = created.pk
        obj.__dict__.update(created.__dict__)

    def delete_model(self, request, obj):
        services.account_delete(account=obj)

    def delete_queryset(self, request, queryset):
        # "Delete selected" goes through the service too: the regional data and ident claims of
        # the accounts go with them.
        services.accounts_delete(accounts=list(queryset))


@admin.register(Token)
class TokenAdmin(admin.ModelAdmin):
    list_display = ["id", "account", "key_prefix", "info", "enabled", "access_type", "expire", "ttl", "last_used"]
    list_filter = ["enabled", "access_type"]
    search_fields = ["info", "key_prefix"]
    fields = ["account", "info", "enabled", "access_type", "expire", "ttl", "key_prefix", "created", "last_used"]
    readonly_fields = ["key_prefix", "created", "last_used"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "account"] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            services.token_update(
                token=obj,
                data={name: getattr(obj, name) for name in ("info", "enabled", "expire", "ttl", "access_type")},
            )
            return
        token, key = services.token_create(
            account=obj.account, info=obj.info, enabled=obj.enabled, expire=obj.expire, ttl=obj.ttl,
            access_type=obj.access_type,
        )
        obj.__dict__.update(token.__dict__)
        messages.warning(request, f"Token key (shown once, copy it now): {key}")
