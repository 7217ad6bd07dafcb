{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "registrar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
*/}}
{{- define "registrar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "registrar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registrar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registrar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "registrar.labels" -}}
helm.sh/chart: {{ include "registrar.chart" . }}
{{ include "registrar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: registrar
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "registrar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "registrar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "registrar.leaseName" -}}
{{- default (include "registrar.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "registrar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
host:port for REGISTRAR_ADMIN_ADDR; IPv6 hosts in brackets.
*/}}
{{- define "registrar.adminAddr" -}}
{{- if contains ":" .Values.admin.bindAddress }}
{{- printf "[%s]:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- else }}
{{- printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- end }}
{{- end }}

{{/*
Checks that JSON schema cannot express (relations between values).
*/}}
{{- define "registrar.validate" -}}
{{- if and .Values.leaderElection.enabled (ge (int .Values.leaderElection.leaseDuration) (int .Values.leaseTTL)) }}
{{- fail (printf "leaderElection.leaseDuration (%d s) must be shorter than leaseTTL (%d s): a new leader must re-attach every key before the old etcd lease can expire" (int .Values.leaderElection.leaseDuration) (int .Values.leaseTTL)) }}
{{- end }}
{{- if and .Values.leaderElection.enabled (lt (mul 2 (int .Values.leaseTTL)) (mul 3 (add 2 (int .Values.leaderElection.leaseDuration)))) }}
{{- fail (printf "leaseTTL (%d s) is too short for leaderElection.leaseDuration (%d s): it must be at least 1.5 x (leaseDuration + 2 s), because the old etcd lease may have only 2/3 of its TTL left when a leader dies and a standby takes over up to leaseDuration + 2 s later" (int .Values.leaseTTL) (int .Values.leaderElection.leaseDuration)) }}
{{- end }}
{{- if and .Values.etcd.tls.enabled .Values.etcd.tls.clientCert (not (and .Values.etcd.tls.certKey .Values.etcd.tls.keyKey)) }}
{{- fail "etcd.tls.clientCert needs etcd.tls.certKey and etcd.tls.keyKey" }}
{{- end }}
{{- $tls := .Values.etcd.tls.enabled }}
{{- range .Values.etcd.endpoints }}
{{- if and $tls (not (hasPrefix "https://" .)) }}
{{- fail (printf "etcd.tls.enabled is true but endpoint %q is not https://" .) }}
{{- end }}
{{- if and (not $tls) (hasPrefix "https://" .) }}
{{- fail (printf "endpoint %q is https:// but etcd.tls.enabled is false (set etcd.tls.secretName to the CA)" .) }}
{{- end }}
{{- end }}
{{- end }}
