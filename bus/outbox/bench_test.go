package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/dedupredis"
	"github.com/busline/busline/schema"
)

// benchPayload is the payload of every benchmark message: 16 bytes of
// JSON (watermill-sql's default payload column is JSON).
var benchPayload = []byte(`{"n":1234567890}`)

// BenchmarkOutboxRelay measures how fast committed outbox rows reach a
// broker, in batches of 100: b.N rows are written first (not timed), then
// the relay moves them. Beside it, the same rows moved with no broker by a
// raw pgx select+delete loop, and watermill-sql v4's subscriber reading
// (and acking) b.N messages from its own table. Run it with a fixed count:
//
//	go test -run '^$' -bench BenchmarkOutboxRelay -benchtime 20000x ./bus/outbox/
func BenchmarkOutboxRelay(b *testing.B) {
	b.Run("kafka", func(b *testing.B) {
		addrs := testserver.Kafka(b, 4)
		benchRelay(b, kafkaBus(b, addrs), nil)
	})
	b.Run("amqp", func(b *testing.B) {
		cfg := amqp.Config{URL: testserver.AMQPURL(b)}
		bs, err := bus.New(bus.Config{Broker: bus.BrokerAMQP, AMQP: cfg}, quiet)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bs.Close(context.Background()) })
		benchRelay(b, bs, func(topic string) { amqpQueue(b, cfg, topic) })
	})
	b.Run("raw_pgx", benchRawPgx)
	b.Run("watermill_sql", benchWatermillSQL)
}

// fill writes n keyed messages into o's table, 100 per transaction.
func fill(b *testing.B, p *pgxpool.Pool, o *outbox.Outbox, topic string, n int) {
	b.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 100 {
		msgs := make([]*message.Message, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			m := message.NewMessage(watermill.NewUUID(), benchPayload)
			m.Metadata.Set(schema.KeyPartitionKey, fmt.Sprintf("k%d", j%64))
			msgs = append(msgs, m)
		}
		tx, err := p.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := o.PublishTx(ctx, tx, topic, msgs...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRelay relays b.N rows to topic through bs; prepare, when set,
// gives the topic somewhere to keep the messages.
func benchRelay(b *testing.B, bs *bus.Bus, prepare func(topic string)) {
	p := pool(b)
	hook, wait := waitRelayed()
	o := newOutbox(b, bs, p, outbox.Config{OnRelayed: hook, BatchSize: 100})
	topic := bustest.Name("bench")
	if prepare != nil {
		prepare(topic)
	}
	fill(b, p, o, topic, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	run(b, bs)
	wait(b, b.N)
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}

// benchRawPgx moves rows of the same shape with plain pgx: select 100,
// delete them, commit; no broker.
func benchRawPgx(b *testing.B) {
	p := pool(b)
	ctx := context.Background()
	table, _ := tables(b, p)
	if _, err := p.Exec(ctx, `CREATE TABLE `+table+` (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text NOT NULL, key text NOT NULL, uuid text NOT NULL, metadata jsonb NOT NULL, payload bytea NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if _, err := p.Exec(ctx, `INSERT INTO `+table+` (topic, key, uuid, metadata, payload)
SELECT 'bench', 'k' || (i % 64), gen_random_uuid()::text, '{"ce_id":"x"}', $1 FROM generate_series(1, $2) i`, benchPayload, b.N); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	moved := 0
	for moved < b.N {
		tx, err := p.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		rows, _ := tx.Query(ctx, `SELECT id, topic, uuid, metadata, payload FROM `+table+` ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED`)
		var ids []int64
		var id int64
		var topic, uuid string
		var md, payload []byte
		if _, err := pgx.ForEachRow(rows, []any{&id, &topic, &uuid, &md, &payload}, func() error {
			ids = append(ids, id)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE id = ANY($1)`, ids); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		moved += len(ids)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}

// benchWatermillSQL reads b.N messages with watermill-sql v4's PostgreSQL
// subscriber (batch 100, its xid8-ordered schema and offsets table) and
// acks each; no broker.
func benchWatermillSQL(b *testing.B) {
	p := pool(b)
	ctx := context.Background()
	topic := "busline_bench_" + watermill.NewShortUUID()
	schemaAdapter := wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: 100}
	db := wsql.BeginnerFromPgx(p)
	b.Cleanup(func() {
		_, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS "watermill_`+topic+`", "watermill_offsets_`+topic+`"`)
	})
	logger := watermill.NopLogger{}
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: schemaAdapter, AutoInitializeSchema: true}, logger)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i += 100 {
		msgs := make([]*message.Message, 0, 100)
		for range min(100, b.N-i) {
			msgs = append(msgs, message.NewMessage(watermill.NewUUID(), benchPayload))
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		ConsumerGroup:    "bench",
		SchemaAdapter:    schemaAdapter,
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
		PollInterval:     10 * time.Millisecond,
	}, logger)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := sub.Subscribe(sctx, topic)
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		m := <-ch
		m.Ack()
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}

// amqpQueue declares a durable queue bound to topic's exchange, so that
// RabbitMQ keeps (and confirms) what the relay publishes, and deletes both
// when the benchmark ends.
func amqpQueue(b *testing.B, cfg amqp.Config, topic string) {
	br, err := amqp.New(cfg, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	if err := br.Prepare(context.Background(), topic, "bench"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		testserver.DeleteAMQP(b, cfg.URL, []string{amqp.QueueName(topic, "bench")}, []string{amqp.ExchangeName(topic)})
	})
}

// BenchmarkInbox measures the cost per message of a handler that writes
// one row: through the inbox (its transaction holds the inbox row and the
// write), and the same write in a transaction of its own behind the dedup
// middleware with the Redis store (claim, then commit, in Redis). Handlers
// are called directly, without a broker; each message is new.
//
//	go test -run '^$' -bench BenchmarkInbox -benchtime 5000x ./bus/outbox/
func BenchmarkInbox(b *testing.B) {
	p := pool(b)
	ctx := context.Background()
	o := newOutbox(b, memoryBus(b), p, outbox.Config{DisableRelay: true})
	effects := o.Config().Table + "_effects"
	if _, err := p.Exec(ctx, `CREATE TABLE `+effects+` (id text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS `+effects) })
	insert := `INSERT INTO ` + effects + ` (id) VALUES ($1)`

	b.Run("inbox", func(b *testing.B) {
		h := o.Inbox("bench", func(ctx context.Context, msg *message.Message) error {
			_, err := outbox.TxFromContext(ctx).Exec(ctx, insert, msg.UUID)
			return err
		})
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if err := h(ctx, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("redis_dedup", func(b *testing.B) {
		rc := redis.NewClient(&redis.Options{Addr: testserver.RedisAddr(b)})
		defer rc.Close()
		h := middleware.Dedup(middleware.DedupConfig{
			Store:     dedupredis.New(rc, dedupredis.Config{Prefix: bustest.Name("bench") + ":"}),
			Namespace: "bench",
		})(func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			tx, err := p.Begin(ctx)
			if err != nil {
				return nil, err
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if _, err := tx.Exec(ctx, insert, msg.UUID); err != nil {
				return nil, err
			}
			return nil, tx.Commit(ctx)
		})
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := h(message.NewMessage(watermill.NewUUID(), nil)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
