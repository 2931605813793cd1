{{- define "silt.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "silt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "silt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "silt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "silt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "silt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "silt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "silt.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Settings that must be given: fail with what to set. */}}
{{- define "silt.validate" -}}
{{- if not .Values.objectStore.url -}}
{{- fail "objectStore.url is required: where Silt keeps segments, e.g. --set objectStore.url=s3://my-bucket/silt" -}}
{{- end -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is required: the etcd cluster Silt keeps its metadata in, e.g. --set 'etcd.endpoints={silt-etcd:2379}'" -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.tls.existingSecret) -}}
{{- fail "etcd.tls.enabled needs etcd.tls.existingSecret: a Secret with ca.crt (and tls.crt, tls.key)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
