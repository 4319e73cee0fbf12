package schema_test

import (
	"bytes"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// checkSchemaError fails unless err is nil or a permanent *schema.Error.
func checkSchemaError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var se *schema.Error
	if !errors.As(err, &se) || !middleware.IsPermanent(err) || se.ErrorType() == "" {
		t.Fatalf("error %v (%T) is not a permanent *schema.Error", err, err)
	}
}

// FuzzDecodeEnvelope feeds arbitrary metadata and payloads, in binary and
// structured mode, to the envelope reader and the registry. Nothing may
// panic, the message must stay untouched, every error must be a permanent
// *schema.Error, and an envelope that was read must survive Apply +
// FromMessage unchanged.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add("application/json", "id-1", "/orders", ordertest.Created, "2026-01-02T03:04:05.5Z", "1", "", "tenant", "acme", []byte(`{"id":"o-1","amount":12.5}`))
	f.Add("application/json", "id-1", "/orders", ordertest.Created, "", "3", "", "", "", []byte(`{"order_id":"o-1","amount_cents":5,"currency":"EUR"}`))
	f.Add("", "id-1", "urn:x", ordertest.Created, "2026-01-02T03:04:05+02:00", "4", "https://s.example/v4.json", "", "", []byte(`{}`))
	f.Add("application/json", "id-1", "/a b", "com.example.unknown", "now", "x", "rel", "Bad", "v", []byte(`not json`))
	f.Add("application/cloudevents+json", "", "", "", "", "", "", "", "",
		[]byte(`{"specversion":"1.0","id":"1","source":"/p","type":"com.example.order.created","dataversion":2,"data":{"id":"o","amount_cents":1}}`))
	f.Add("application/cloudevents+json; charset=utf-8", "", "", "", "", "", "", "", "",
		[]byte(`{"specversion":"1.0","id":"1","source":"/p","type":"t","datacontenttype":"text/plain","data_base64":"aGk="}`))
	r := newOrderRegistry(schema.WithSchemaBase("https://s.example"))

	f.Fuzz(func(t *testing.T, ct, id, source, typ, tm, ver, ds, extName, extVal string, payload []byte) {
		md := message.Metadata{
			schema.KeyDataContentType: ct,
			schema.KeyID:              id,
			schema.KeySource:          source,
			schema.KeySpecVersion:     "1.0",
			schema.KeyType:            typ,
			schema.KeyTime:            tm,
			schema.KeyDataVersion:     ver,
			schema.KeyDataSchema:      ds,
		}
		if extName != "" {
			md[schema.KafkaPrefix+extName] = extVal
		}
		msg := message.NewMessage("uuid", payload)
		msg.Metadata = md
		mdBefore := maps.Clone(md)
		payloadBefore := bytes.Clone(payload)

		env, data, err := schema.FromMessage(msg)
		checkSchemaError(t, err)
		_, _, derr := r.Decode(msg)
		checkSchemaError(t, derr)
		_, _, derr = schema.DecodeAs[ordertest.V3](r, msg)
		checkSchemaError(t, derr)
		if !bytes.Equal(msg.Payload, payloadBefore) || !maps.Equal(msg.Metadata, mdBefore) {
			t.Fatal("message modified")
		}
		if err != nil {
			return
		}
		if verr := env.Validate(); verr != nil {
			t.Fatalf("FromMessage returned an envelope that fails Validate: %v", verr)
		}
		if strings.HasPrefix(strings.ToLower(env.DataContentType), "application/cloudevents") {
			return // would be read as structured again
		}
		out := message.NewMessage("other", data)
		env.Apply(out)
		back, data2, err := schema.FromMessage(out)
		if err != nil {
			t.Fatalf("re-reading applied envelope: %v (%+v)", err, env)
		}
		if !back.Time.Equal(env.Time) {
			t.Fatalf("time %v != %v", back.Time, env.Time)
		}
		back.Time, env.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(back, env) || !bytes.Equal(data2, data) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", back, env)
		}
	})
}

// FuzzStructuredJSON feeds arbitrary bodies as structured-mode CloudEvents.
func FuzzStructuredJSON(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"/p","type":"t","time":"2026-01-02T03:04:05Z","data":{"a":[1,2,{"b":null}]}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"/p","type":"t","data_base64":"AAEC"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"/p","type":"t","datacontenttype":"text/plain","data":"x\u00e9"}`))
	f.Add([]byte(`{"specversion":1,"id":true,"source":null,"type":[],"data":1,"data_base64":2}`))
	f.Add([]byte(`{"id":"1","dataversion":"99999999999999999999","Ext":1.5e300}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, body []byte) {
		msg := message.NewMessage("uuid", body)
		msg.Metadata[schema.KeyDataContentType] = schema.ContentTypeStructured
		before := bytes.Clone(body)
		env, data, err := schema.FromMessage(msg)
		checkSchemaError(t, err)
		if !bytes.Equal(msg.Payload, before) {
			t.Fatal("payload modified")
		}
		if err == nil {
			if verr := env.Validate(); verr != nil {
				t.Fatalf("invalid envelope accepted: %v", verr)
			}
			if len(data) > 0 && len(body) > 0 && &data[0] == &msg.Payload[0] {
				t.Fatal("structured data aliases the payload")
			}
		}
	})
}
