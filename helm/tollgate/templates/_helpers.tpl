{{/* The release's base name: the release name, with "tollgate" appended unless it is in it. */}}
{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Service names end in -api and -webhook, not -control or -inject: Kubernetes
turns a Service's name into <NAME>_SERVICE_HOST, <NAME>_PORT… variables in
every pod of the namespace, and TOLLGATE_CONTROL_* / TOLLGATE_INJECT_* are
the control endpoint's and the injector's own config prefixes.
*/}}
{{- define "tollgate.controlService" -}}{{ include "tollgate.fullname" . }}-api{{- end -}}
{{- define "tollgate.injectorService" -}}{{ include "tollgate.fullname" . }}-webhook{{- end -}}
{{- define "tollgate.control" -}}{{ include "tollgate.fullname" . }}-control{{- end -}}
{{- define "tollgate.injector" -}}{{ include "tollgate.fullname" . }}-injector{{- end -}}

{{- define "tollgate.labels" -}}
app.kubernetes.io/name: tollgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tollgate.selector" -}}
app.kubernetes.io/name: tollgate
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tollgate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The control endpoint's URL as the sidecars reach it. */}}
{{- define "tollgate.controlUrl" -}}
{{- if .Values.injector.sidecar.controlUrl -}}
{{ .Values.injector.sidecar.controlUrl }}
{{- else if .Values.control.enabled -}}
http://{{ include "tollgate.controlService" . }}.{{ .Release.Namespace }}.svc:{{ .Values.control.port }}
{{- end -}}
{{- end -}}

{{/* Secure defaults of every container the chart runs. */}}
{{- define "tollgate.containerSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tollgate.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The webhook's TLS material: generated once and kept across upgrades. */}}
{{- define "tollgate.webhookTls" -}}
{{- $secretName := printf "%s-tls" (include "tollgate.injector" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- if and $existing $existing.data (index $existing.data "ca.crt") -}}
{{- dict "ca" (index $existing.data "ca.crt") "cert" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") | toJson -}}
{{- else -}}
{{- $svc := include "tollgate.injectorService" . -}}
{{- $ns := .Release.Namespace -}}
{{- $ca := genCA "tollgate-injector-ca" (int .Values.injector.certDays) -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $names (int .Values.injector.certDays) $ca -}}
{{- dict "ca" ($ca.Cert | b64enc) "cert" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) | toJson -}}
{{- end -}}
{{- end -}}
