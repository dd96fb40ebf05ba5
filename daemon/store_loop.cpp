// The worker's side of remote stores: one channel per store its clients read, the
// channels' sockets polled on the worker's ring, their completions run like the ring's.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>

#include "worker.hpp"

namespace pagerd::daemon {

void Worker::StoreLoop::wake()
{
    const std::uint64_t one = 1;
    (void)!::write(m_w.m_inbox_fd.get(), &one, sizeof one);
}

store::Channel* Worker::channel_for(const std::shared_ptr<store::Store>& s)
{
    auto it = m_channels.find(s.get());
    if (it != m_channels.end() && !it->second.shut) return it->second.channel.get();
    auto ch = s->open_channel(m_store_loop);
    if (!ch) return nullptr;  // a local store: read through the ring
    if (it != m_channels.end()) {  // mapped again while its channel closed: that one finishes aside
        m_closing_channels.push_back(std::move(it->second));
        m_channels.erase(it);
    }
    auto& use = m_channels[s.get()];
    use.store = s;
    s->channel_holders().fetch_add(1);
    use.channel = std::move(ch);
    return use.channel.get();
}

void Worker::store_poll(store::Watch& w, int fd, unsigned events)
{
    auto* op = new Op{Op::Kind::StorePoll};
    op->watch = &w;
    w.armed = true;
    m_watch_ops[&w] = op;
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_add(s, fd, events);
    io_uring_sqe_set_data(s, op);
}

void Worker::store_cancel(store::Watch& w)
{
    auto it = m_watch_ops.find(&w);
    if (it == m_watch_ops.end()) return;
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_remove(s, reinterpret_cast<std::uint64_t>(it->second));
    io_uring_sqe_set_data(s, nullptr);  // the removal's own completion: nothing to do
}

void Worker::run_store_completions()
{
    while (!m_store_done.empty()) {
        auto done = std::move(m_store_done);
        m_store_done.clear();
        for (const auto& [token, res] : done) handle_completion(static_cast<Op*>(token), res);
    }
}

void Worker::tick_channels(Clock::time_point now, bool close_unused)
{
    auto visit = [&](ChannelUse& use) {
        use.channel->tick(now);
        // Nobody maps the store any more (the workers' channels hold the last references):
        // its connections close, then the channel goes.
        // The worker stops: reads of remote stores end now rather than at their deadline
        // (a dead server would hold the stop that long); their faults get SIGBUS.
        if (!use.shut && (m_stopping || (close_unused && use.store.use_count() <= use.store->channel_holders().load() &&
                                         use.channel->idle()))) {
            use.channel->shutdown();
            use.shut = true;
        }
        return use.shut && use.channel->closed();
    };
    for (auto it = m_channels.begin(); it != m_channels.end();) it = visit(it->second) ? m_channels.erase(it) : std::next(it);
    for (auto it = m_closing_channels.begin(); it != m_closing_channels.end();)
        it = visit(*it) ? m_closing_channels.erase(it) : std::next(it);
    run_store_completions();
}

}  // namespace pagerd::daemon
